"""The Train tab's data, checked before anything trains: an uploaded zip extracted safely (no
zip-slip, links or zip bombs), the folder that holds the classes, and a dataset check (classes,
images per class) for the upload or a registered dataset on the server.

    name, root, check = resolve_dataset(zip_path, UPLOAD, None, work_dir)
    if not check.ok: print(check.summary())
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..data import DATASETS, DataError, load_dataset

UPLOAD = "upload"  # the dataset source "the uploaded zip" (else a registered dataset name)
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


def check_dataset(root: str | os.PathLike, dataset: str = "imagefolder",
                  min_per_class: int = MIN_PER_CLASS) -> DatasetCheck:
    """Everything that would make training fail or meaningless, found before it starts: fewer than
    two classes, or a class with too few images to train, validate and test on."""
    try:
        index = load_dataset(dataset, root)
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


def inside(folder: Path, roots: list[Path]) -> bool:
    """``folder`` (resolved: symlinks and ``..`` followed) lies in one of ``roots`` (resolved too)."""
    folder = folder.resolve()
    return any(folder == r or r in folder.parents for r in (Path(r).expanduser().resolve() for r in roots))


OUTSIDE = ("that folder is outside the folders this server trains from (its data roots): choose one under them, "
           "or upload a zip")
NO_SERVER_DATA = "this server trains only on uploaded zips: choose 'uploaded zip' and upload one folder per class"


def confine(data_dir: str, data_roots: list[str | os.PathLike] | None, public: bool = False) -> Path:
    """The server folder ``data_dir`` if it may be read: under one of ``data_roots`` once resolved (a
    relative folder is taken below each root in turn); without roots any folder in local mode and
    none in public mode. Refusals are one line naming no path (``DataError``)."""
    roots = [Path(r).expanduser() for r in (data_roots or [])]
    if public and not roots:
        raise DataError(NO_SERVER_DATA)
    folder = Path(str(data_dir).strip()).expanduser()
    if not roots:
        if not folder.is_dir():
            raise DataError(f"{folder} is not a folder on the server")
        return folder
    candidates = [folder] if folder.is_absolute() else [root / folder for root in roots]
    for candidate in candidates:
        if inside(candidate, roots) and candidate.resolve().is_dir():
            return candidate.resolve()
    if any(inside(c, roots) for c in candidates):
        raise DataError("that folder does not exist under this server's data roots")
    raise DataError(OUTSIDE)


def resolve_dataset(zip_file: str | os.PathLike | None, dataset: str | None, data_dir: str | None,
                    work: str | os.PathLike, data_roots: list[str | os.PathLike] | None = None,
                    public: bool = False) -> tuple[str, Path, DatasetCheck]:
    """(dataset name, data folder, check) for the uploaded zip (``dataset == UPLOAD``, extracted into
    ``work``) or a registered dataset in ``data_dir`` on the server, confined to ``data_roots``
    (:func:`confine`). In ``public`` mode a server dataset that cannot be used is refused in one
    line that names no file or folder of it."""
    dataset = (dataset or UPLOAD).strip()
    if dataset == UPLOAD:
        if not zip_file:
            raise DataError("upload a zip of your images first (one folder per class), or choose a "
                            "registered dataset and its folder")
        if not str(zip_file).lower().endswith(".zip"):
            raise DataError(f"{Path(zip_file).name} is not a .zip file")
        root = dataset_root(safe_extract_zip(zip_file, Path(work) / "upload"))
        return "imagefolder", root, check_dataset(root)
    if public and not data_roots:
        raise DataError(NO_SERVER_DATA)
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(sorted(DATASETS))}")
    if not str(data_dir or "").strip():
        raise DataError(f"enter the folder that holds {dataset} on the server (Data dir)")
    folder = confine(str(data_dir), data_roots, public)
    if not public:
        return dataset, folder, check_dataset(folder, dataset)
    try:
        check = check_dataset(folder, dataset)
    except (DataError, UploadError, OSError):
        raise DataError(f"could not read {dataset} from that folder (see the dataset's expected layout in the "
                        "README)") from None
    if not check.ok:
        raise DataError(f"cannot train on {dataset} from that folder: it needs at least two classes with at least "
                        f"{MIN_PER_CLASS} images each")
    return dataset, folder, check
