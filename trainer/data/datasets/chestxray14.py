"""NIH ChestX-ray14 (Wang et al. 2017): 112120 frontal chest X-rays, 14 pathology labels (multi-label).

"Finding Labels" holds findings joined by '|', or "No Finding" (all zeros). The official
patient-wise test list is test_list.txt.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError, short_list
from ..index import DatasetIndex
from ..scan import find_file, index_files_by_stem, require_dir
from ..subgroups import DEFAULT_AGE_BINS, demographics
from .common import match_images, read_table

CLASSES = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
           "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia"]
NO_FINDING = "No Finding"
EXPECTED = """data_dir/
  Data_Entry_2017.csv (or Data_Entry_2017_v2020.csv)   columns "Image Index","Finding Labels","Patient ID",...
  train_val_list.txt, test_list.txt                    (official split, optional)
  images_001/images/00000001_000.png ...               (or images/*.png; any images*/ folder)"""


def read_nih_labels(csv_path) -> tuple[pd.DataFrame, np.ndarray]:
    """The label table and its float32 [N, 14] 0/1 matrix (columns in CLASSES order)."""
    csv_path = Path(csv_path)
    df = read_table(csv_path, ["Image Index", "Finding Labels", "Patient ID"], EXPECTED,
                    dtype={"Image Index": str, "Finding Labels": str, "Patient ID": str})
    column = {c: j for j, c in enumerate(CLASSES)}
    matrix = np.zeros((len(df), len(CLASSES)), dtype=np.float32)
    unknown = set()
    for i, text in enumerate(df["Finding Labels"].fillna(NO_FINDING)):
        for finding in text.split("|"):
            finding = finding.strip()
            if finding == NO_FINDING:
                continue
            j = column.get(finding)
            if j is None:
                unknown.add(finding)
            else:
                matrix[i, j] = 1.0
    if unknown:
        raise DataError(f"{csv_path}: unknown finding label(s) {short_list(sorted(unknown))}.\n"
                        f"Expected '|'-joined names from {CLASSES} or '{NO_FINDING}'.")
    return df, matrix


def _read_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def load_chestxray14(data_dir, official_split: bool = True, age_bins=DEFAULT_AGE_BINS) -> DatasetIndex:
    """ChestX-ray14, multi-label over 14 findings; groups = Patient ID; official_test from test_list.txt.

    subgroups: sex (Patient Gender) and age (Patient Age, binned at `age_bins`).
    """
    root = require_dir(data_dir, EXPECTED)
    csv = find_file(root, ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"], EXPECTED)
    df, matrix = read_nih_labels(csv)
    images = index_files_by_stem(root, (".png",))
    stems = [Path(n.strip()).stem for n in df["Image Index"]]
    keep, paths, notes = match_images("chestxray14", root, stems, images, EXPECTED, what="images")
    df, matrix = df.iloc[keep], matrix[keep]
    official_test = None
    if official_split:
        try:
            test_list = find_file(root, ["test_list.txt"], EXPECTED)
        except DataError:
            notes.append("no test_list.txt found: no official test split")
        else:
            test_names = _read_list(test_list)
            official_test = np.asarray([n.strip() in test_names for n in df["Image Index"]], dtype=bool)
    return DatasetIndex(name="chestxray14", paths=paths, labels=matrix, class_names=list(CLASSES),
                        multilabel=True, groups=df["Patient ID"].str.strip().tolist(),
                        official_test=official_test, notes=notes, root=str(root),
                        subgroups=demographics(df, "Patient Gender", "Patient Age", age_bins))
