"""Tests of trainer.data.splits: grouped, stratified, seeded splits; the paper's training-set sizes;
saving and reloading splits."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainer.data import DataError, DatasetIndex, load_splits, make_splits, save_splits
from trainer.data.splits import GENERIC_SPLIT, SPLIT_DEFAULTS, default_fractions

REFERENCE = Path(__file__).resolve().parents[3] / "trainer" / "reference" / "dutt2024_reported.csv"


def synthetic_index(n_groups=120, seed=0, multilabel=False, official_test=None) -> DatasetIndex:
    """Patients with 1-4 images each; imbalanced classes (labels are per patient)."""
    rng = np.random.default_rng(seed)
    paths, groups, labels = [], [], []
    for g in range(n_groups):
        label = rng.choice(3, p=[0.6, 0.3, 0.1]) if not multilabel else (rng.random(4) < [0.3, 0.2, 0.1, 0.05])
        for k in range(rng.integers(1, 5)):
            paths.append(f"/data/set/p{g:03d}/img{k}.png")
            groups.append(f"p{g:03d}")
            labels.append(label)
    labels = np.asarray(labels, dtype=np.float32 if multilabel else np.int64)
    classes = ["a", "b", "c", "d"] if multilabel else ["common", "medium", "rare"]
    return DatasetIndex("synthetic", paths, labels, classes, multilabel=multilabel, groups=groups,
                        official_test=official_test)


def groups_of(index, pos):
    return {index.groups[i] for i in pos}


def test_splits_grouped_stratified_and_complete():
    index = synthetic_index()
    s = make_splits(index, seed=0)
    all_pos = np.concatenate([s["train"], s["val"], s["test"]])
    assert sorted(all_pos.tolist()) == list(range(len(index)))            # partition
    g = {k: groups_of(index, v) for k, v in s.items()}
    assert not (g["train"] & g["val"] or g["train"] & g["test"] or g["val"] & g["test"])
    n = len(index)
    assert abs(len(s["test"]) / n - 0.2) < 0.05 and abs(len(s["val"]) / n - 0.1) < 0.05
    for name, pos in s.items():
        counts = np.bincount(index.labels[pos], minlength=3)
        assert (counts > 0).all(), (name, counts)                          # each class in each split
        share = counts / counts.sum()
        overall = np.bincount(index.labels, minlength=3) / n
        assert np.abs(share - overall).max() < 0.1


def test_splits_deterministic_by_seed():
    index = synthetic_index()
    a, b, c = make_splits(index, seed=3), make_splits(index, seed=3), make_splits(index, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_splits_multilabel_grouped():
    index = synthetic_index(n_groups=200, multilabel=True)
    s = make_splits(index, seed=1)
    g = {k: groups_of(index, v) for k, v in s.items()}
    assert not (g["train"] & g["val"] or g["train"] & g["test"] or g["val"] & g["test"])
    for pos in s.values():
        assert (index.labels[pos].sum(axis=0) > 0).all()                   # every label in every split


def test_splits_official_test():
    base = synthetic_index()
    official = np.asarray([grp < "p030" for grp in base.groups])
    index = synthetic_index(official_test=official)
    s = make_splits(index, seed=0, test_frac=0.5)
    assert np.array_equal(s["test"], np.flatnonzero(official))
    rest = (~official).sum()
    assert abs(len(s["val"]) / rest - 0.1) < 0.05 and len(s["train"]) + len(s["val"]) == rest
    assert not groups_of(index, s["test"]) & groups_of(index, s["train"])


def test_fraction_subsamples_train_only():
    index = synthetic_index(n_groups=300)
    full = make_splits(index, seed=0)
    part = make_splits(index, seed=0, fraction=0.25)
    assert np.array_equal(full["val"], part["val"]) and np.array_equal(full["test"], part["test"])
    assert set(part["train"]) < set(full["train"])
    assert abs(len(part["train"]) / len(full["train"]) - 0.25) < 0.05
    tiny = make_splits(index, seed=0, fraction=0.002)           # rounds to 0 for the smaller classes
    assert (np.bincount(index.labels[tiny["train"]], minlength=3) >= 1).all()
    for bad in (0.0, 1.5):
        with pytest.raises(DataError, match="fraction"):
            make_splits(index, seed=0, fraction=bad)
    with pytest.raises(DataError, match="val_frac"):
        make_splits(index, seed=0, val_frac=0.5, test_frac=0.5)


def test_class_without_training_images_is_an_error():
    index = synthetic_index()
    official = index.labels == 2                     # every "rare" image in the official test list
    index = synthetic_index(official_test=official)
    with pytest.raises(DataError, match="rare"):
        make_splits(index, seed=0, fraction=0.5)


def test_save_load_splits_round_trip(tmp_path):
    index = synthetic_index()
    s = make_splits(index, seed=0, fraction=0.5)
    path = save_splits(s, index, tmp_path / "run" / "splits.json", meta={"seed": 0})
    doc = json.loads(path.read_text())
    assert doc["dataset"] == "synthetic" and doc["meta"] == {"seed": 0}
    assert doc["splits"]["train"][0].startswith("p") and not doc["splits"]["train"][0].startswith("/")
    assert sum(doc["counts"]["test"].values()) == len(s["test"])
    loaded = load_splits(path, index)
    assert all(np.array_equal(loaded[k], s[k]) for k in s)
    moved = DatasetIndex("synthetic", [p.replace("/data/set", "/mnt/other") for p in index.paths],
                         index.labels, index.class_names, groups=index.groups)
    assert all(np.array_equal(load_splits(path, moved)[k], s[k]) for k in s)   # relative paths
    fewer = index.subset(np.arange(1, len(index)))
    with pytest.raises(DataError, match="not in the dataset"):
        load_splits(path, fewer)
    other = DatasetIndex("other", index.paths, index.labels, index.class_names)
    with pytest.raises(DataError, match="synthetic"):
        load_splits(path, other)


# ----------------------------------------------------------------------------- the paper's split sizes

def paper_sized_index(name: str, class_counts: dict[str, int], n_groups: int | None = None, seed: int = 0):
    """An index the size of the public dataset (no image files: splits only read labels and groups).
    With n_groups < images, images share groups (HAM10000: several images per lesion)."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, k) for k, n in enumerate(class_counts.values())])
    n = len(labels)
    groups = None
    if n_groups is not None:  # a group keeps one label; its images are consecutive
        starts = np.sort(rng.choice(np.arange(1, n), size=n_groups - 1, replace=False))
        group_of = np.zeros(n, dtype=np.int64)
        group_of[starts] = 1
        groups = [f"g{g}" for g in np.cumsum(group_of)]
    paths = [f"/data/{name}/img{i:05d}.png" for i in range(n)]
    return DatasetIndex(name, paths, labels, list(class_counts), groups=groups)


PUBLIC = {  # dataset: (class counts of the public release, groups or None)
    "breastus": ({"benign": 437, "malignant": 210, "normal": 133}, None),
    "ham10000": ({"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705, "vasc": 142}, 7470),
    "rsna_pneumonia": ({"normal": 20672, "pneumonia": 6012}, 26684),  # one image per patient
    "smdg": ({"non_glaucoma": 7499, "glaucoma": 4817}, None),        # SMDG-19 without its 133 suspects
}


def paper_n_train(dataset: str) -> int:
    ref = pd.read_csv(REFERENCE)
    values = ref.loc[(ref["dataset"] == dataset) & (ref["task"] == "classification"), "n_train"].unique()
    assert len(values) == 1, values
    return int(values[0])


@pytest.mark.parametrize("dataset", sorted(PUBLIC))
def test_default_split_reproduces_the_papers_n_train_within_1_percent(dataset):
    counts, n_groups = PUBLIC[dataset]
    index = paper_sized_index(dataset, counts, n_groups)
    s = make_splits(index, seed=0)
    n_train, paper = len(s["train"]), paper_n_train(dataset)
    assert abs(n_train - paper) <= 0.01 * paper, (dataset, n_train, paper)
    assert sum(len(v) for v in s.values()) == len(index)
    val_frac, test_frac = SPLIT_DEFAULTS[dataset]
    assert abs(len(s["test"]) - test_frac * len(index)) <= 0.01 * len(index)
    if n_groups is not None:  # groups kept whole
        g = {k: {index.groups[i] for i in v} for k, v in s.items()}
        assert not (g["train"] & g["test"] or g["train"] & g["val"] or g["val"] & g["test"])


def test_old_default_missed_the_paper_and_generic_default_is_unchanged():
    counts, _ = PUBLIC["breastus"]
    index = paper_sized_index("breastus", counts)
    old = make_splits(index, seed=0, val_frac=0.1, test_frac=0.2)
    assert len(old["train"]) < 0.95 * paper_n_train("breastus")  # 70%: 546 of 780, the finding
    assert default_fractions("imagefolder") == GENERIC_SPLIT == (0.10, 0.20)
    assert default_fractions("HAM10000") == SPLIT_DEFAULTS["ham10000"]

