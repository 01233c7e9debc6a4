"""CheXpert (Irvin et al., AAAI 2019): 224,316 chest radiographs of 65,240 patients, 14 observations
labelled from reports as positive (1), negative (0), uncertain (-1) or not mentioned (blank).

Layout as downloaded (``CheXpert-v1.0-small/`` or the full-resolution ``CheXpert-v1.0/``): ``train.csv``
and ``valid.csv`` whose ``Path`` column reads ``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``,
i.e. relative to the folder *holding* the dataset folder, which becomes the index root (so saved splits
and MED-PEFT's split lists name images exactly as the CSVs do).

- classes: the 5 competition observations (Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural
  Effusion) by default, ``labels="all"`` for all 14 (CSV order), or a comma-separated subset;
- blanks are 0; uncertain labels follow a policy (Irvin et al., Section 4), one for all labels or per
  label: ``u_ones`` (-> 1, the default, as GLoRIA/MGCA-style preprocessing of the 5 tasks does),
  ``u_zeros`` (-> 0) or ``ignore``: stored as :data:`MASKED` (-1) in the label matrix, meaning *unknown*:
  the multi-label loss and the metrics leave such entries out (the splits count only entries > 0.5);
- ``frontal_only``: drop lateral views; groups = patient (no patient in two splits);
- the test set of CheXpert is hidden: the official validation set (``valid.csv``, 234 images labelled by
  a consensus of three radiologists, no uncertain labels) is the held-out ``official_test`` split, as in
  the literature; validation is drawn from ``train.csv`` by patient (``official_split=False``: valid.csv
  images join the pool);
- subgroups: sex (F/M) and age (binned at ``age_bins``) from the ``Sex`` and ``Age`` columns.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError, layout_error, short_list
from ..index import DatasetIndex
from ..scan import missing_note, require_dir
from ..subgroups import DEFAULT_AGE_BINS, demographics
from .common import read_table

ALL_LABELS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
              "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
              "Fracture", "Support Devices"]
COMPETITION = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
POLICIES = ("u_ones", "u_zeros", "ignore")
DEFAULT_POLICY = "u_ones"
MASKED = -1.0
FOLDERS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
EXPECTED = """data_dir/                     (the folder holding the dataset folder, or the dataset folder itself)
  CheXpert-v1.0-small/         (or CheXpert-v1.0/, full resolution)
    train.csv                  columns Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,...,Support Devices
    valid.csv                  (official validation set, optional)
    train/patient00001/study1/view1_frontal.jpg ..."""


def label_names(labels: str | list[str] = "competition") -> list[str]:
    """The classes for ``labels``: 'competition', 'all', or names (a list or comma-separated)."""
    if isinstance(labels, str):
        if labels.lower() == "competition":
            return list(COMPETITION)
        if labels.lower() == "all":
            return list(ALL_LABELS)
        labels = [s.strip() for s in labels.split(",") if s.strip()]
    names = [str(s) for s in labels]
    unknown = [n for n in names if n not in ALL_LABELS]
    if unknown or not names or len(set(names)) != len(names):
        raise DataError(f"CheXpert labels: expected 'competition', 'all' or distinct names from {ALL_LABELS}; "
                        f"got {names} (unknown: {unknown}).")
    return names


def policies(classes: list[str], uncertain: str | dict = DEFAULT_POLICY) -> dict[str, str]:
    """The uncertain-label policy of each class: one policy for all, or {label: policy, 'default': policy}."""
    per = dict(uncertain) if isinstance(uncertain, dict) else {"default": uncertain}
    default = per.pop("default", DEFAULT_POLICY)
    unknown = sorted(set(per) - set(classes))
    if unknown:
        raise DataError(f"CheXpert uncertain policy given for {unknown}, which are not among the classes {classes}.")
    out = {c: per.get(c, default) for c in classes}
    bad = sorted({p for p in out.values() if p not in POLICIES})
    if bad:
        raise DataError(f"CheXpert uncertain policy {bad}: expected one of {list(POLICIES)}.")
    return out


def chexpert_label_matrix(df: pd.DataFrame, classes: list[str], uncertain: str | dict = DEFAULT_POLICY,
                          source: str = "CheXpert") -> np.ndarray:
    """float32 [N, C] from the CSV columns: 1 positive, 0 negative or blank, uncertain (-1) by policy
    (``ignore``: :data:`MASKED`)."""
    policy = policies(classes, uncertain)
    matrix = np.zeros((len(df), len(classes)), dtype=np.float32)
    for j, c in enumerate(classes):
        values = pd.to_numeric(df[c], errors="coerce")
        bad = values.notna() & ~values.isin([1.0, 0.0, -1.0])
        if bad.any():
            raise DataError(f"{source}: column {c!r} holds {short_list(sorted(set(df[c][bad].astype(str))), 5)}; "
                            f"expected 1, 0, -1 or blank.")
        column = values.fillna(0.0).to_numpy(dtype=np.float32)
        column[column == -1.0] = {"u_ones": 1.0, "u_zeros": 0.0, "ignore": MASKED}[policy[c]]
        matrix[:, j] = column
    return matrix


def read_chexpert_labels(csv_path, labels: str | list[str] = "competition", uncertain: str | dict = DEFAULT_POLICY,
                         frontal_only: bool = False) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows of a CheXpert CSV (frontal ones only, if asked) and their label matrix."""
    classes = label_names(labels)
    df = read_table(Path(csv_path), ["Path", *classes], EXPECTED, dtype={"Path": str})
    if frontal_only:
        if "Frontal/Lateral" not in df.columns:
            raise DataError(f"{csv_path} lacks the column 'Frontal/Lateral' needed by frontal_only.")
        df = df[df["Frontal/Lateral"].astype(str).str.strip().str.lower() == "frontal"].reset_index(drop=True)
    return df, chexpert_label_matrix(df, classes, uncertain, str(csv_path))


def patient_of(path: str) -> str:
    """'CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg' -> 'patient00001'."""
    for part in path.replace("\\", "/").split("/"):
        if part.startswith("patient"):
            return part
    return path


def dataset_folder(data_dir) -> Path:
    """The CheXpert folder (the one holding train.csv) for a data_dir that is it or holds it."""
    root = require_dir(data_dir, EXPECTED)
    for candidate in (root, *(root / f for f in FOLDERS)):
        if (candidate / "train.csv").is_file():
            return candidate
    raise layout_error(f"No CheXpert train.csv in {root} or its {' / '.join(FOLDERS)} folder.", EXPECTED, root)


def load_chexpert(data_dir, labels: str | list[str] = "competition", uncertain: str | dict = DEFAULT_POLICY,
                  frontal_only: bool = False, official_split: bool = True,
                  age_bins=DEFAULT_AGE_BINS) -> DatasetIndex:
    """CheXpert, multi-label; images whose file is missing are counted in the notes (DataError if none is there)."""
    folder = dataset_folder(data_dir)
    root = folder.parent  # the CSV paths start with the dataset folder's name
    tables, matrices, is_valid = [], [], []
    for name in ("train.csv", "valid.csv"):
        if not (folder / name).is_file():
            continue
        df, matrix = read_chexpert_labels(folder / name, labels, uncertain, frontal_only)
        tables.append(df)
        matrices.append(matrix)
        is_valid.append(np.full(len(df), name == "valid.csv"))
    df = pd.concat(tables, ignore_index=True)
    matrix, is_valid = np.concatenate(matrices), np.concatenate(is_valid)
    rel = [_relative(p, folder.name) for p in df["Path"].astype(str)]
    exists = np.asarray([os.path.isfile(root / r) for r in rel], dtype=bool)
    if not exists.any():
        raise layout_error(f"None of the {len(rel)} images of {folder.name}'s CSVs is under {root} (looked for "
                           f"e.g. {short_list(rel[:2], 2)}).", EXPECTED, folder)
    notes = []
    if not exists.all():
        missing = [r for r, e in zip(rel, exists) if not e]
        notes.append(missing_note(len(missing), len(rel), "images", missing))
    if not (folder / "valid.csv").is_file():
        notes.append("no valid.csv found: no official held-out split")
    keep = np.flatnonzero(exists)
    df = df.iloc[keep]
    classes = label_names(labels)
    masked = int((matrix[keep] == MASKED).sum())
    if masked:
        notes.append(f"{masked} uncertain labels masked out (policy 'ignore')")
    official = is_valid[keep] if official_split and is_valid[keep].any() else None
    return DatasetIndex(name="chexpert", paths=[str(root / rel[i]) for i in keep], labels=matrix[keep],
                        class_names=classes, multilabel=True, groups=[patient_of(rel[i]) for i in keep],
                        official_test=official, subgroups=demographics(df, "Sex", "Age", age_bins),
                        notes=notes, root=str(root))


def _relative(path: str, folder_name: str) -> str:
    """A CSV path relative to the index root: the dataset folder is named as on this disk (a full-resolution
    download whose CSV says CheXpert-v1.0/ still resolves when the folder was renamed)."""
    parts = path.strip().replace("\\", "/").split("/")
    if parts and parts[0] in FOLDERS:
        parts = parts[1:]
    return "/".join([folder_name, *parts])
