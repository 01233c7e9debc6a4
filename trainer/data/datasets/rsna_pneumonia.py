"""RSNA Pneumonia Detection Challenge (Kaggle 2018, stage 2): chest X-ray DICOMs, normal vs pneumonia.

stage_2_train_labels.csv has one row per bounding box (several per patient with pneumonia)
and one row with Target=0 per negative patient; a patient is positive if any row has Target=1.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..index import DatasetIndex
from ..scan import find_file, index_files_by_stem, require_dir
from .common import check_labels, match_images, read_table, single_label_index

CLASSES = ["normal", "pneumonia"]
EXPECTED = """data_dir/
  stage_2_train_labels.csv         columns patientId,x,y,width,height,Target
  stage_2_train_images/<patientId>.dcm ..."""


def read_rsna_labels(csv_path) -> pd.DataFrame:
    """One row per patient: columns patientId, Target (max over the patient's rows), first-seen order."""
    csv_path = Path(csv_path)
    df = read_table(csv_path, ["patientId", "Target"], EXPECTED, dtype={"patientId": str})
    check_labels(df["Target"], [0, 1], csv_path)
    per_patient = df.groupby("patientId", sort=False)["Target"].max().reset_index()
    per_patient["Target"] = per_patient["Target"].astype(int)
    return per_patient


def load_rsna_pneumonia(data_dir) -> DatasetIndex:
    """RSNA pneumonia; one image per patient, groups = patientId. Missing DICOMs are counted in notes."""
    root = require_dir(data_dir, EXPECTED)
    csv = find_file(root, ["stage_2_train_labels.csv"], EXPECTED)
    labels = read_rsna_labels(csv)
    images = index_files_by_stem(root, (".dcm", ".dicom"))
    keep, paths, notes = match_images("rsna_pneumonia", root, labels["patientId"].tolist(), images,
                                      EXPECTED, what="patients")
    labels = labels.iloc[keep]
    names = [CLASSES[t] for t in labels["Target"]]
    return single_label_index("rsna_pneumonia", root, paths, names, CLASSES,
                              groups=labels["patientId"].tolist(), notes=notes)
