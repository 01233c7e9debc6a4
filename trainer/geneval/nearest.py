"""The nearest training image of one generated image, for the app: the adapter's training pairs are found
through its run folder (``<run>/train_pairs.csv``, written by the generation loop beside ``adapter/``),
compared in pixel space with the aligned normalised cross-correlation of :mod:`.memorization`, and judged
against the run's calibrated pixel threshold when its ``geneval/test.json`` report is there.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import torch

TRAIN_PAIRS = "train_pairs.csv"
_INDEX: dict[str, tuple] = {}


def write_train_pairs(folder: str | os.PathLike, pairs) -> Path:
    """``folder/train_pairs.csv`` (path,text) of the pairs a run trained on (local paths, never pushed)."""
    path = Path(folder) / TRAIN_PAIRS
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "text"])
        for p in pairs:
            w.writerow([p.path, p.text])
    return path


def _run_folder(adapter_folder: str | os.PathLike) -> Path:
    return Path(adapter_folder).parent


def _index(run: Path):
    """(paths, descriptors, small images, pixel threshold or None) of the run's training images, cached."""
    from .images import load_set
    from .memorization import train_descriptors

    listing = run / TRAIN_PAIRS
    key = f"{listing}:{listing.stat().st_mtime_ns}"
    if key not in _INDEX:
        with open(listing, newline="", encoding="utf-8") as f:
            paths = [r["path"] for r in csv.DictReader(f) if r.get("path")]
        present = [p for p in paths if Path(p).is_file()]
        if not present:
            raise FileNotFoundError(f"none of the {len(paths)} training images listed in {listing} is on this machine")
        images = load_set(present, (), role="train", progress=False)
        tau = None
        report = run / "geneval" / "test.json"
        if report.is_file():
            mem = (json.loads(report.read_text()).get("sets", {}).get("generated", {}) or {}).get("memorization") or {}
            tau = (mem.get("thresholds") or {}).get("pixel")
        _INDEX.clear()  # one adapter's index at a time
        _INDEX[key] = (present, train_descriptors(images.small), images.small, tau, len(paths))
    return _INDEX[key]


def nearest_training(image, adapter_folder: str | os.PathLike | None) -> dict:
    """``{"available": False, "reason": ...}`` or the nearest training image of ``image`` (a PIL image or
    path): its path, pixel distance (1 - aligned NCC), relative distance (to the next 10 neighbours), the
    run's calibrated threshold and whether the image falls below it."""
    from .images import load_set
    from .memorization import pixel_similarity, relative

    if adapter_folder is None:
        return {"available": False, "reason": "no adapter selected (the base model's training set is not local)"}
    run = _run_folder(adapter_folder)
    if not (run / TRAIN_PAIRS).is_file():
        return {"available": False, "reason": "this adapter's training set is not available locally "
                                              f"(no {TRAIN_PAIRS} beside its folder)"}
    try:
        paths, desc, _, tau, n_listed = _index(run)
    except (FileNotFoundError, ValueError, OSError) as e:
        return {"available": False, "reason": f"this adapter's training set is not available locally ({e})"}
    query = load_set([image], (), role="generated", progress=False)
    sims = pixel_similarity(query.small, desc)
    idx, dist, rel = relative(1 - sims)
    ratio = float(torch.exp(rel[0]))
    return {"available": True, "path": paths[int(idx[0])], "distance": float(dist[0]), "relative": ratio,
            "threshold": tau, "flagged": (ratio < tau) if tau is not None else None, "n_train": len(paths),
            "n_listed": n_listed}
