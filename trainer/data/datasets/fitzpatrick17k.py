"""Fitzpatrick 17k (Groh et al. 2021): 16577 clinical skin images with Fitzpatrick skin types.

Images are downloaded from their URLs by the user and saved as <md5hash>.jpg; some URLs are
dead, so rows without an image are skipped and counted in the notes.
"""
from __future__ import annotations

from ..errors import DataError
from ..index import DatasetIndex
from ..scan import find_file, index_files_by_stem, require_dir
from ..subgroups import group_fitzpatrick
from .common import match_images, read_table, single_label_index

TASKS = ("three_partition_label", "nine_partition_label", "label")
EXPECTED = """data_dir/
  fitzpatrick17k.csv     columns md5hash,fitzpatrick_scale,fitzpatrick_centaur,label,
                         nine_partition_label,three_partition_label,qc,url,url_alphanum
  <any folders>/<md5hash>.jpg ..."""


def load_fitzpatrick17k(data_dir, task: str = "three_partition_label") -> DatasetIndex:
    """Fitzpatrick 17k; task = three_partition_label (3 classes, default) | nine_partition_label | label (114).

    Classes are the task column's values, sorted. groups = md5hash (duplicate rows stay together).
    subgroups: skin_type from fitzpatrick_scale, grouped I-II / III-IV / V-VI (-1 or missing: unknown).
    """
    if task not in TASKS:
        raise DataError(f"fitzpatrick17k: unknown task {task!r}; expected one of {list(TASKS)}.")
    root = require_dir(data_dir, EXPECTED)
    csv = find_file(root, ["fitzpatrick17k.csv"], EXPECTED)
    df = read_table(csv, ["md5hash", task], EXPECTED, dtype=str)
    df[task] = df[task].str.strip()
    notes = []
    unlabeled = df[task].isna() | (df[task] == "")
    if unlabeled.any():
        notes.append(f"{int(unlabeled.sum())} rows skipped: no {task}")
        df = df[~unlabeled]
    class_names = sorted(df[task].unique())
    images = index_files_by_stem(root, (".jpg", ".jpeg", ".png"))
    keep, paths, missing = match_images("fitzpatrick17k", root, df["md5hash"].str.strip().tolist(),
                                        images, EXPECTED)
    df = df.iloc[keep]
    notes += missing
    present = set(df[task])
    absent = [c for c in class_names if c not in present]
    if absent:
        notes.append(f"classes without any downloaded image (kept in class_names): {absent}")
    subgroups = {"skin_type": group_fitzpatrick(df["fitzpatrick_scale"])} if "fitzpatrick_scale" in df else {}
    return single_label_index("fitzpatrick17k", root, paths, df[task].tolist(), class_names,
                              groups=df["md5hash"].tolist(), notes=notes, subgroups=subgroups)
