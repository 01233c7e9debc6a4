"""Fine-tuning from a web page (the app's Train tab), without the web: safe upload handling,
dataset checks before training, and one background training job with live progress and a Stop
that keeps the best checkpoint so far.

The app calls :func:`prepare_upload` (zip -> image folder, guarded), :func:`check_dataset`, then
:class:`TrainingJob` and polls :meth:`TrainingJob.events`.
"""
from __future__ import annotations

import os
import queue
import re
import shutil
import stat
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DEFAULT_VIT, TrainConfig
from ..data import DataError, load_dataset

MAX_FILES = 20_000
MAX_TOTAL_BYTES = 2 * 1024**3  # uncompressed
MAX_RATIO = 200  # a member inflating more than this is a zip bomb, not an image
MIN_PER_CLASS = 5
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ""}


class UploadError(ValueError):
    """A plain-language problem with an uploaded dataset."""


def _safe_member_path(dest: Path, name: str) -> Path:
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or "\\" in name:
        raise UploadError(f"the zip holds an absolute or Windows path ({name!r}): refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UploadError(f"the zip holds a path that escapes its folder ({name!r}): refused")
    target = (dest / Path(*parts)).resolve() if parts else dest
    if dest != target and dest not in target.parents:
        raise UploadError(f"the zip holds a path that escapes its folder ({name!r}): refused")
    return target


def safe_extract_zip(zip_path: str | os.PathLike, dest: str | os.PathLike, max_files: int = MAX_FILES,
                     max_total_bytes: int = MAX_TOTAL_BYTES, max_ratio: int = MAX_RATIO) -> Path:
    """Extract ``zip_path`` into ``dest`` refusing path traversal (zip-slip), links, too many files,
    too many bytes (declared or actually inflated) and implausible compression ratios (zip bombs).
    Nothing is left behind on refusal."""
    dest = Path(dest).resolve()
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UploadError(f"not a readable zip file ({e})") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if len(members) > max_files:
            raise UploadError(f"the zip holds {len(members):,} files; the limit is {max_files:,}")
        declared = sum(m.file_size for m in members)
        if declared > max_total_bytes:
            raise UploadError(f"the zip would unpack to {declared / 1e9:.1f} GB; the limit is "
                              f"{max_total_bytes / 1e9:.1f} GB")
        for m in members:
            _safe_member_path(dest, m.filename)
            if stat.S_ISLNK(m.external_attr >> 16):
                raise UploadError(f"the zip holds a symbolic link ({m.filename!r}): refused")
            if m.compress_size and m.file_size / m.compress_size > max_ratio and m.file_size > 1_000_000:
                raise UploadError(f"{m.filename!r} inflates {m.file_size / m.compress_size:.0f}x: refused as a "
                                  f"zip bomb")
        dest.mkdir(parents=True, exist_ok=True)
        written = 0
        try:
            for m in members:
                target = _safe_member_path(dest, m.filename)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > max_total_bytes or written > declared:  # sizes in the header lied
                            raise UploadError("the zip unpacks to more than it declares: refused as a zip bomb")
                        out.write(chunk)
        except Exception:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    return dest


def dataset_root(folder: str | os.PathLike) -> Path:
    """The folder whose sub-folders are the classes (descends through single wrapper folders and
    ignores macOS ``__MACOSX``/hidden entries)."""
    folder = Path(folder)
    while True:
        entries = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
        dirs = [p for p in entries if p.is_dir()]
        files = [p for p in entries if p.is_file()]
        if len(dirs) == 1 and not files:
            folder = dirs[0]
            continue
        return folder


@dataclass
class DatasetCheck:
    root: Path
    class_counts: dict[str, int]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        lines = [f"{len(self.class_counts)} classes, {sum(self.class_counts.values())} images: " +
                 ", ".join(f"{c} ({n})" for c, n in self.class_counts.items())]
        lines += [f"problem: {p}" for p in self.problems] + [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def check_dataset(root: str | os.PathLike, min_per_class: int = MIN_PER_CLASS) -> DatasetCheck:
    """Everything that would make training fail or meaningless, found before it starts."""
    try:
        index = load_dataset("imagefolder", root)
    except DataError as e:
        raise UploadError(str(e)) from None
    counts = index.class_counts()
    check = DatasetCheck(Path(root), counts, notes=list(index.notes))
    if len(counts) < 2:
        check.problems.append("at least two classes (two sub-folders of images) are needed")
    few = {c: n for c, n in counts.items() if n < min_per_class}
    if few:
        check.problems.append("too few images to train, validate and test on: " + ", ".join(
            f"{c} has {n}" for c, n in few.items()) + f" (at least {min_per_class} per class)")
    return check


def default_choice(has_gpu: bool | None = None) -> tuple[str, str]:
    """(backbone, method) as the paper recommends: SSF for CNNs, LoRA for ViTs; a ViT only on a GPU."""
    import torch

    from adapters import OFFLINE_LITE0

    gpu = torch.cuda.is_available() if has_gpu is None else has_gpu
    return (DEFAULT_VIT, "lora") if gpu else (OFFLINE_LITE0, "ssf")


class TrainingJob:
    """One training run in a background thread. ``events()`` yields progress dicts:
    ``{"kind": "epoch", "epoch", "train_loss", "val": {...}}``, ``{"kind": "done", "results"}`` or
    ``{"kind": "error", "message"}``. ``stop()`` ends training after the current step; the best
    validation checkpoint so far is tested and saved."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self._events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.results: dict[str, Any] | None = None
        self.error: str | None = None

    def start(self) -> "TrainingJob":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _run(self) -> None:
        from ..loops.classify import run

        def progress(event: dict) -> None:
            self._events.put(event)

        try:
            self.results = run(self.cfg, progress=progress, stop=self._stop)
            self._events.put({"kind": "done", "results": self.results})
        except Exception as e:  # shown to the user as a message; the server keeps serving
            self.error = f"{type(e).__name__}: {e}" if not isinstance(e, (DataError, ValueError)) else str(e)
            self._events.put({"kind": "error", "message": self.error})

    def events(self, poll: float = 0.5):
        while True:
            try:
                event = self._events.get(timeout=poll)
            except queue.Empty:
                if not self._thread.is_alive() and self._events.empty():
                    return
                yield {"kind": "tick", "time": time.time()}
                continue
            yield event
            if event["kind"] in ("done", "error"):
                return
