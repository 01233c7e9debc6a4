"""RSNA Pneumonia Detection Challenge (Kaggle 2018, stage 2): chest X-ray DICOMs, normal vs pneumonia.

stage_2_train_labels.csv has one row per bounding box (several per patient with pneumonia)
and one row with Target=0 per negative patient; a patient is positive if any row has Target=1.
Sex and age come from the DICOM headers (PatientSex, PatientAge): from a header table in data_dir
when there is one (e.g. kaggle_stage_2_train_images_dicom_headers.csv.gz, as torchxrayvision
ships), else read from each file's header (no pixels; about 2 ms per file).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import pydicom
from tqdm import tqdm

from ..index import DatasetIndex
from ..scan import find_file, index_files_by_stem, require_dir
from ..subgroups import DEFAULT_AGE_BINS, UNKNOWN, demographics
from .common import check_labels, match_images, read_table, single_label_index

CLASSES = ["normal", "pneumonia"]
EXPECTED = """data_dir/
  stage_2_train_labels.csv         columns patientId,x,y,width,height,Target
  stage_2_train_images/<patientId>.dcm ...
  *dicom_headers*.csv[.gz]         (optional) columns PatientID,PatientSex,PatientAge"""
HEADER_TAGS = ["PatientSex", "PatientAge"]


def read_rsna_labels(csv_path) -> pd.DataFrame:
    """One row per patient: columns patientId, Target (max over the patient's rows), first-seen order."""
    csv_path = Path(csv_path)
    df = read_table(csv_path, ["patientId", "Target"], EXPECTED, dtype={"patientId": str})
    check_labels(df["Target"], [0, 1], csv_path)
    per_patient = df.groupby("patientId", sort=False)["Target"].max().reset_index()
    per_patient["Target"] = per_patient["Target"].astype(int)
    return per_patient


def read_dicom_headers(paths: list[str], progress: bool = True) -> pd.DataFrame:
    """PatientSex and PatientAge of each DICOM file (header only, pixels skipped); unreadable -> empty."""
    rows = []
    for path in tqdm(paths, desc="DICOM headers", unit="file", disable=not progress or len(paths) < 1000):
        try:
            with warnings.catch_warnings():   # RSNA stores ages as '43', not the DICOM Age String '043Y'
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
                rows.append({t: str(ds.get(t, "") or UNKNOWN) for t in HEADER_TAGS})
        except Exception:  # a damaged file still trains (the image cache reports it); its groups are unknown
            rows.append({t: UNKNOWN for t in HEADER_TAGS})
    return pd.DataFrame(rows, columns=HEADER_TAGS)


def _header_table(root: Path) -> pd.DataFrame | None:
    """A DICOM-header table in data_dir indexed by patient id, or None."""
    for path in sorted(root.iterdir()):
        name = path.name.lower()
        if "dicom_headers" in name and name.endswith((".csv", ".csv.gz")) and path.is_file():
            df = read_table(path, ["PatientID", *HEADER_TAGS], EXPECTED, dtype=str)
            return df.drop_duplicates("PatientID").set_index("PatientID")
    return None


def patient_demographics(root: Path, patient_ids: list[str], paths: list[str], age_bins) -> dict:
    """subgroups sex and age per patient, from a header table if data_dir has one, else the DICOMs."""
    table = _header_table(root)
    if table is not None and set(patient_ids) <= set(table.index):
        headers = table.loc[patient_ids, HEADER_TAGS].reset_index(drop=True)
    else:
        headers = read_dicom_headers(paths)
    return demographics(headers, "PatientSex", "PatientAge", age_bins)


def load_rsna_pneumonia(data_dir, age_bins=DEFAULT_AGE_BINS, read_headers: bool = True) -> DatasetIndex:
    """RSNA pneumonia; one image per patient, groups = patientId. Missing DICOMs are counted in notes.

    subgroups: sex and age (binned at `age_bins`) from the DICOM headers; read_headers=False skips them.
    """
    root = require_dir(data_dir, EXPECTED)
    csv = find_file(root, ["stage_2_train_labels.csv"], EXPECTED)
    labels = read_rsna_labels(csv)
    images = index_files_by_stem(root, (".dcm", ".dicom"))
    keep, paths, notes = match_images("rsna_pneumonia", root, labels["patientId"].tolist(), images,
                                      EXPECTED, what="patients")
    labels = labels.iloc[keep]
    names = [CLASSES[t] for t in labels["Target"]]
    ids = labels["patientId"].tolist()
    subgroups = patient_demographics(root, ids, paths, age_bins) if read_headers else {}
    return single_label_index("rsna_pneumonia", root, paths, names, CLASSES,
                              groups=ids, notes=notes, subgroups=subgroups)
