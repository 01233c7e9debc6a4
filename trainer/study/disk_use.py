"""Disk use of results folders: what each run folder below a results folder keeps, in bytes, and how much
of it is tensors (``.safetensors``, ``.pt``, ``.pth``, ``.bin``). ``python -m trainer.benchmark report``
prints it and writes it into the report (a finished run keeps each tensor once: its adapter)."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

TENSOR_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
COLUMNS = ["folder", "kind", "files", "bytes", "tensor_bytes"]


def folder_bytes(folder: str | os.PathLike) -> tuple[int, int, int]:
    """(files, bytes, tensor bytes) of every regular file below ``folder`` (links not followed)."""
    files = total = tensors = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            try:
                if os.path.islink(path):
                    continue
                size = os.path.getsize(path)
            except OSError:
                continue
            files += 1
            total += size
            if name.endswith(TENSOR_SUFFIXES):
                tensors += size
    return files, total, tensors


def disk_use(results_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per folder holding a ``results.json`` (a run or a benchmark cell; folders inside it are
    counted in it), one for anything else below ``results_dir`` (``other``: studies, reports, errors),
    and a last row ``total``."""
    results_dir = Path(results_dir)
    runs = sorted({p.parent for p in results_dir.rglob("results.json")}, key=lambda p: len(p.parts))
    tops: list[Path] = []
    for run in runs:
        if not any(top in run.parents for top in tops):
            tops.append(run)
    rows = []
    for top in sorted(tops):
        files, size, tensors = folder_bytes(top)
        rows.append({"folder": os.path.relpath(top, results_dir), "kind": "run", "files": files, "bytes": size,
                     "tensor_bytes": tensors})
    files, size, tensors = folder_bytes(results_dir)
    other = {"files": files - sum(r["files"] for r in rows), "bytes": size - sum(r["bytes"] for r in rows),
             "tensor_bytes": tensors - sum(r["tensor_bytes"] for r in rows)}
    if other["files"]:
        rows.append({"folder": "(other files)", "kind": "other", **other})
    rows.append({"folder": "total", "kind": "total", "files": files, "bytes": size, "tensor_bytes": tensors})
    return pd.DataFrame(rows, columns=COLUMNS)


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def disk_use_lines(results_dir: str | os.PathLike) -> list[str]:
    """``disk use  <folder>  12.3 MB (tensors 10.1 MB, 14 files)`` per folder, the total last."""
    df = disk_use(results_dir)
    width = max([len(f) for f in df["folder"]] + [6])
    return [f"disk use  {r.folder:<{width}}  {human(r.bytes):>9} (tensors {human(r.tensor_bytes)}, {r.files} files)"
            for r in df.itertuples()]


def disk_use_markdown(results_dir: str | os.PathLike) -> list[str]:
    df = disk_use(results_dir)
    lines = ["## Disk use per results folder", "", "| folder | files | size | tensors |", "|---|---:|---:|---:|"]
    lines += [f"| {r.folder} | {r.files} | {human(r.bytes)} | {human(r.tensor_bytes)} |" for r in df.itertuples()]
    return lines + [""]
