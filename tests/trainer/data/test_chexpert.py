"""CheXpert: the label parser on the real train.csv shipped with torchxrayvision, and the loader's layout."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from trainer.data import DataError, load_dataset
from trainer.data.datasets.chexpert import (ALL_LABELS, COMPETITION, MASKED, chexpert_label_matrix, patient_of,
                                            read_chexpert_labels)

TXV_CSV = Path(__import__("torchxrayvision").__file__).parent / "data" / "chexpert_train.csv.gz"


@pytest.fixture(scope="module")
def real() -> pd.DataFrame:
    return pd.read_csv(TXV_CSV)


def test_real_csv_uncertain_counts_per_label(real):
    df, ignore = read_chexpert_labels(TXV_CSV, labels="all", uncertain="ignore")
    assert len(df) == 223414 and ignore.shape == (223414, 14) and ignore.dtype == np.float32
    for j, c in enumerate(ALL_LABELS):
        raw = real[c]
        assert int((ignore[:, j] == MASKED).sum()) == int((raw == -1.0).sum()), c
        assert int((ignore[:, j] == 1).sum()) == int((raw == 1.0).sum()), c
        assert int((ignore[:, j] == 0).sum()) == int((raw == 0.0).sum() + raw.isna().sum()), c  # blanks -> 0
    assert int((ignore[:, ALL_LABELS.index("Atelectasis")] == MASKED).sum()) == 33739
    _, ones = read_chexpert_labels(TXV_CSV, uncertain="u_ones")
    _, zeros = read_chexpert_labels(TXV_CSV, uncertain="u_zeros")
    for j, c in enumerate(COMPETITION):
        assert int(ones[:, j].sum()) == int((real[c] == 1.0).sum() + (real[c] == -1.0).sum()), c
        assert int(zeros[:, j].sum()) == int((real[c] == 1.0).sum()), c
    frontal, _ = read_chexpert_labels(TXV_CSV, frontal_only=True)
    assert len(frontal) == int((real["Frontal/Lateral"] == "Frontal").sum()) == 191027


def test_per_label_policy():
    df = pd.DataFrame({c: [-1.0, None, 1.0] for c in COMPETITION})
    m = chexpert_label_matrix(df, COMPETITION, {"Atelectasis": "u_ones", "Edema": "u_ones", "default": "u_zeros"})
    assert m[0].tolist() == [1, 0, 0, 1, 0] and m[1].tolist() == [0] * 5 and m[2].tolist() == [1] * 5
    m = chexpert_label_matrix(df, COMPETITION, {"Cardiomegaly": "ignore"})  # others: the default u_ones
    assert m[0].tolist() == [1, MASKED, 1, 1, 1]
    with pytest.raises(DataError, match="uncertain policy"):
        chexpert_label_matrix(df, COMPETITION, "u_maybe")
    with pytest.raises(DataError, match="not among the classes"):
        chexpert_label_matrix(df, COMPETITION, {"Fracture": "u_ones"})
    with pytest.raises(DataError, match="expected 1, 0, -1 or blank"):
        chexpert_label_matrix(pd.DataFrame({c: [2.0] for c in COMPETITION}), COMPETITION)


def write_tree(root: Path, real: pd.DataFrame, n_train: int = 24, n_valid: int = 6) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A CheXpert-v1.0-small folder: real rows of train.csv (images for all but the last), a valid.csv."""
    folder = root / "CheXpert-v1.0-small"
    folder.mkdir(parents=True)
    train = real.iloc[:n_train].copy()
    valid = real.iloc[n_train:n_train + n_valid].copy()
    valid["Path"] = [f"CheXpert-v1.0-small/valid/patient6454{k}/study1/view1_frontal.jpg" for k in range(n_valid)]
    valid[ALL_LABELS] = valid[ALL_LABELS].fillna(0).replace(-1.0, 0.0)  # consensus labels: 0/1 only
    train.to_csv(folder / "train.csv", index=False)
    valid.to_csv(folder / "valid.csv", index=False)
    for k, rel in enumerate(list(train["Path"])[:-1] + list(valid["Path"])):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (16, 16), k * 7).save(path, format="JPEG")
    return train, valid


def test_loader_layout_groups_official_split_and_subgroups(tmp_path, real):
    train, valid = write_tree(tmp_path, real)
    for data_dir in (tmp_path, tmp_path / "CheXpert-v1.0-small"):  # the folder above, or the dataset folder
        index = load_dataset("chexpert", data_dir)
        assert index.multilabel and index.class_names == COMPETITION and len(index) == 23 + 6
        assert index.relpaths()[:23] == list(train["Path"])[:23]
        assert index.relpaths()[23:] == list(valid["Path"])
        assert index.official_test.sum() == 6 and index.official_test[23:].all()
        assert index.groups[0] == "patient00001" and index.groups[-1] == "patient64545"
        assert any("1 of 30 images skipped" in n for n in index.notes)
    expected = train[COMPETITION].iloc[:23].fillna(0).replace(-1.0, 1.0).to_numpy(np.float32)
    assert np.array_equal(index.labels[:23], expected)
    sex = train["Sex"].iloc[:23].map({"Male": "M", "Female": "F"}).fillna("unknown")
    assert index.subgroups["sex"][:23].tolist() == sex.tolist()
    assert set(index.subgroups["age"]) <= {"<40", "40-59", "60-79", "80+", "unknown"}
    ignore = load_dataset("chexpert", tmp_path, uncertain="ignore", labels="all", frontal_only=True)
    frontal = train.iloc[:23]["Frontal/Lateral"].eq("Frontal").sum() + 6
    assert len(ignore) == frontal and ignore.num_classes() == 14
    assert (ignore.labels == MASKED).any() and any("masked" in n for n in ignore.notes)
    # class counts count positives only, never the masked entries
    assert ignore.class_counts()["Atelectasis"] == int((ignore.labels[:, 8] == 1).sum())
    assert load_dataset("chexpert", tmp_path, official_split=False).official_test is None
    assert patient_of("CheXpert-v1.0/train/patient00042/study3/view2_lateral.jpg") == "patient00042"


def test_loader_errors(tmp_path, real):
    with pytest.raises(DataError, match="No CheXpert train.csv"):
        load_dataset("chexpert", tmp_path)
    folder = tmp_path / "CheXpert-v1.0-small"
    folder.mkdir()
    real.iloc[:5].to_csv(folder / "train.csv", index=False)
    with pytest.raises(DataError, match="None of the 5 images"):
        load_dataset("chexpert", tmp_path)
    with pytest.raises(DataError, match="CheXpert labels"):
        load_dataset("chexpert", tmp_path, labels="Atelectasis,Flu")
