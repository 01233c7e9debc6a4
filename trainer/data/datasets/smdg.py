"""SMDG-19, the Standardized Multi-Channel Dataset for Glaucoma (Kiefer et al. 2023): fundus images.

types: 0 non-glaucoma, 1 glaucoma, -1 glaucoma suspect (excluded unless include_suspect).
Masks live in sibling folders (optic-disc/, optic-cup/) with the same file names, so images
are taken only from folders named full-fundus.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import DataError, layout_error, short_list
from ..index import DatasetIndex
from ..scan import index_files_by_stem, require_dir, walk_files
from .common import match_images, read_table, single_label_index

CLASSES = ["non_glaucoma", "glaucoma"]
SUSPECT = "suspect"
_TYPE_NAMES = {0: "non_glaucoma", 1: "glaucoma", -1: SUSPECT}
EXPECTED = """data_dir/
  metadata - standardized.csv      (or any CSV with columns names,types)
  full-fundus/full-fundus/<names>.png
  optic-cup/..., optic-disc/...    (masks, ignored)"""


def _strip_image_ext(name: str) -> str:
    """'BEH-1.png' -> 'BEH-1'; names without an image extension are kept whole (they may hold dots)."""
    low = name.lower()
    for ext in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        if low.endswith(ext):
            return name[: -len(ext)]
    return name


def _find_metadata(root: Path) -> Path:
    preferred = [p for p in walk_files(root) if p.name.lower() == "metadata - standardized.csv"]
    if preferred:
        return min(preferred, key=lambda p: (len(p.parts), str(p)))
    for p in sorted(walk_files(root), key=lambda p: (len(p.parts), str(p))):
        if p.suffix.lower() == ".csv":
            try:
                cols = pd.read_csv(p, nrows=0).columns
            except Exception:
                continue
            if {"names", "types"} <= set(cols):
                return p
    raise layout_error(f"No metadata CSV with columns names,types found under {root}.", EXPECTED, root)


def load_smdg(data_dir, include_suspect: bool = False) -> DatasetIndex:
    """SMDG-19 fundus images; classes non_glaucoma, glaucoma (+ suspect as a 3rd class if include_suspect)."""
    root = require_dir(data_dir, EXPECTED)
    csv = _find_metadata(root)
    df = read_table(csv, ["names", "types"], EXPECTED)
    types = pd.to_numeric(df["types"], errors="coerce")
    bad = sorted({str(v) for v, t in zip(df["types"], types) if t not in _TYPE_NAMES})
    if bad:
        raise DataError(f"{csv}: unknown value(s) in column types: {short_list(bad)}.\n"
                        f"Expected 0 (non-glaucoma), 1 (glaucoma) or -1 (suspect).")
    df = df.assign(types=types.astype(int))
    notes = []
    if not include_suspect:
        n_suspect = int((df["types"] == -1).sum())
        if n_suspect:
            notes.append(f"{n_suspect} glaucoma-suspect rows (types=-1) excluded; include_suspect=True keeps them")
        df = df[df["types"] != -1]
    class_names = CLASSES + ([SUSPECT] if include_suspect else [])

    def in_full_fundus(folder: Path) -> bool:
        return "full-fundus" in {part.lower() for part in folder.relative_to(root).parts}

    images = index_files_by_stem(root, (".png", ".jpg", ".jpeg", ".tif", ".tiff"), keep_dir=in_full_fundus)
    if not images:
        raise layout_error(f"No images in a full-fundus/ folder under {root}.", EXPECTED, root)
    stems = [_strip_image_ext(str(n).strip()) for n in df["names"]]
    keep, paths, missing = match_images("smdg", root, stems, images, EXPECTED)
    df = df.iloc[keep]
    labels = [_TYPE_NAMES[t] for t in df["types"]]
    return single_label_index("smdg", root, paths, labels, class_names, notes=notes + missing)
