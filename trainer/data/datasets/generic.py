"""Your own data: a folder per class (`imagefolder`) or a CSV of path,label (`csv`)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import DataError, layout_error, short_list
from ..images import IMAGE_EXTENSIONS
from ..index import DatasetIndex
from ..scan import require_dir, walk_files
from ..subgroups import DEFAULT_AGE_BINS, UNKNOWN, column_subgroups, parse_columns
from .common import read_table, single_label_index

SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
IMAGEFOLDER_EXPECTED = """data_dir/
  <class_a>/img1.png, <class_a>/sub/img2.jpg, ...
  <class_b>/...                    (at least 2 class folders; .png .jpg .jpeg .tif .tiff .bmp .webp .dcm)
or, with an official split:
  train/<class>/..., val/<class>/... (optional), test/<class>/..."""
CSV_EXPECTED = """<csv_path>  (default data_dir/labels.csv)
  path,label[,group][,<group_columns>...]
  images/a.png,benign,patient_1    (paths relative to the CSV's folder, or absolute)"""
METADATA_EXPECTED = """<metadata_csv>  (default data_dir/metadata.csv)
  path,<group_columns>...          e.g. path,sex,age
  <class_a>/img1.png,F,63          (paths relative to data_dir, or bare file names)"""


def _images_in(folder: Path) -> list[str]:
    return [str(p) for p in walk_files(folder) if p.name.lower().endswith(IMAGE_EXTENSIONS)]


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _sort_classes(names) -> list[str]:
    """Sorted class names; numerically when all of them are integers ('2' before '10')."""
    names = list(set(names))
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


def _metadata_subgroups(root: Path, paths: list[str], metadata_csv, group_columns, age_bins):
    """subgroups for imagefolder images from a metadata CSV (path,<group_columns>); (subgroups, notes)."""
    csv = Path(metadata_csv).expanduser() if metadata_csv is not None else root / "metadata.csv"
    if not csv.is_absolute() and (root / csv).exists():
        csv = root / csv
    if not csv.is_file():
        raise layout_error(f"group columns given but metadata CSV {csv} not found.", METADATA_EXPECTED, root)
    df = read_table(csv, ["path"], METADATA_EXPECTED, dtype=str, keep_default_na=False)
    values = column_subgroups(df, group_columns, age_bins)
    keys = [p.strip().replace("\\", "/").removeprefix("./") for p in df["path"]]
    by_rel = {k: i for i, k in enumerate(keys)}
    names = [k.rsplit("/", 1)[-1] for k in keys]
    counts = Counter(names)
    by_name = {n: i for i, n in enumerate(names) if counts[n] == 1}   # a bare name must be unambiguous
    rows = []
    for path in paths:
        rel = Path(path).relative_to(root).as_posix()
        rows.append(by_rel.get(rel, by_name.get(Path(path).name, -1)))
    rows = np.asarray(rows, dtype=np.int64)
    out = {c: np.where(rows >= 0, v[np.maximum(rows, 0)], UNKNOWN) for c, v in values.items()}
    missing = int((rows < 0).sum())
    notes = [f"{missing} of {len(paths)} images have no row in {csv.name}: their groups are '{UNKNOWN}'"] \
        if missing else []
    return out, notes


def load_imagefolder(data_dir, group_columns=None, metadata_csv=None, age_bins=DEFAULT_AGE_BINS) -> DatasetIndex:
    """data_dir/<class>/**/image files; with train/ [val/] test/ top folders, test/ is the official test.

    group_columns (e.g. "sex,age") name columns of metadata_csv (default data_dir/metadata.csv, matched on
    path relative to data_dir or file name) that become subgroups; a column named age is binned at age_bins.
    """
    root = require_dir(data_dir, IMAGEFOLDER_EXPECTED)
    top = _subdirs(root)
    split_mode = bool(top) and all(d.name.lower() in SPLIT_FOLDERS for d in top) and \
        any(SPLIT_FOLDERS[d.name.lower()] == "train" for d in top)
    sources = [(d, SPLIT_FOLDERS[d.name.lower()]) for d in top] if split_mode else [(root, "all")]
    paths, labels, is_test, empty = [], [], [], []
    for folder, split in sources:
        for class_dir in _subdirs(folder):
            found = _images_in(class_dir)
            if not found:
                empty.append(str(class_dir.relative_to(root)))
            paths += found
            labels += [class_dir.name] * len(found)
            is_test += [split == "test"] * len(found)
    class_names = _sort_classes(labels)
    if len(class_names) < 2:
        raise layout_error(f"imagefolder needs at least 2 class folders with images; found "
                           f"{len(class_names)} ({class_names}) with {len(paths)} images.",
                           IMAGEFOLDER_EXPECTED, root)
    notes = [f"class folders without images ignored: {short_list(empty)}"] if empty else []
    official_test = None
    if split_mode:
        official_test = np.asarray(is_test, dtype=bool)
        notes.append("train/ and val/ folders are pooled; make_splits carves val from them")
    subgroups = {}
    if parse_columns(group_columns):
        subgroups, more = _metadata_subgroups(root, paths, metadata_csv, group_columns, age_bins)
        notes += more
    return single_label_index("imagefolder", root, paths, labels, class_names, notes=notes,
                              official_test=official_test, subgroups=subgroups)


def load_csv(data_dir, csv_path=None, group_columns=None, age_bins=DEFAULT_AGE_BINS) -> DatasetIndex:
    """A CSV with columns path,label[,group]; paths relative to the CSV's folder.

    group_columns (e.g. "sex,age") name further columns of the CSV that become subgroups (a column
    named age is binned at age_bins, sex/gender normalised to F/M).

    Classes are the label values, sorted (numerically if all are integers). Rows whose image
    is missing are skipped and counted in the notes (DataError if none is found).
    """
    root = require_dir(data_dir, CSV_EXPECTED)
    csv = Path(csv_path).expanduser() if csv_path is not None else root / "labels.csv"
    if not csv.is_absolute() and (root / csv).exists():
        csv = root / csv  # a relative csv_path is looked up in data_dir first, then the cwd
    if not csv.is_file():
        raise layout_error(f"Label CSV {csv} not found.", CSV_EXPECTED, csv.parent if csv.parent.is_dir() else root)
    df = read_table(csv, ["path", "label"], CSV_EXPECTED, dtype=str, keep_default_na=False)
    df["label"] = df["label"].str.strip()
    if (df["label"] == "").any():
        rows = [int(i) + 2 for i in np.flatnonzero(df["label"].to_numpy() == "")]
        raise DataError(f"{csv}: empty label on line(s) {short_list(rows)}; every row needs a label.")
    base = csv.resolve().parent
    full = [str((base / p.strip()).resolve()) for p in df["path"]]
    exists = np.asarray([Path(p).is_file() for p in full], dtype=bool)
    if not exists.any():
        raise DataError(f"{csv}: none of the {len(df)} image paths exists (paths are relative to {base}; "
                        f"e.g. {short_list(full[:3], 3)}).\nExpected layout:\n{CSV_EXPECTED}")
    notes = []
    if not exists.all():
        missing = [p for p, ok in zip(df["path"], exists) if not ok]
        notes.append(f"{len(missing)} of {len(df)} rows skipped: image missing (e.g. {short_list(missing[:3], 3)})")
    df = df[exists]
    class_names = _sort_classes(df["label"])
    if len(class_names) < 2:
        raise DataError(f"{csv}: found a single class {class_names}; a classifier needs at least 2.")
    groups = df["group"].str.strip().tolist() if "group" in df.columns else None
    paths = [p for p, ok in zip(full, exists) if ok]
    subgroups = column_subgroups(df, group_columns, age_bins)
    return single_label_index("csv", base, paths, df["label"].tolist(), class_names,
                              groups=groups, notes=notes, subgroups=subgroups)
