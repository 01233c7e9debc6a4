"""MED-PEFT split lists: NIH bare names, RSNA DICOM paths, CheXpert paths, label disagreements, errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.data import DataError, DatasetIndex
from trainer.data.datasets.chestxray14 import CLASSES as NIH
from trainer.data.datasets.chexpert import COMPETITION
from trainer.data.split_lists import read_split_list, splits_from_lists


def write_lists(folder: Path, entries: dict[str, list[tuple[str, list[int]]]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in entries.items():
        (folder / name).write_text("".join(f"{p} {' '.join(map(str, ls))}\n" for p, ls in rows))
    return folder


def nih_index(root: Path, n: int = 20) -> DatasetIndex:
    rng = np.random.default_rng(0)
    names = [f"{i:08d}_000.png" for i in range(n)]
    paths = [root / ("images_001" if i < n // 2 else "images_002") / "images" / m for i, m in enumerate(names)]
    labels = (rng.random((n, 14)) < 0.2).astype(np.float32)
    return DatasetIndex(name="chestxray14", paths=paths, labels=labels, class_names=list(NIH), multilabel=True,
                        groups=[str(i) for i in range(n)], root=str(root))


def rows(index: DatasetIndex, positions, name_only=False, flip=()) -> list[tuple[str, list[int]]]:
    rel = index.relpaths()
    out = []
    for i in positions:
        labels = index.labels[i].astype(int).tolist() if index.multilabel else [int(index.labels[i])]
        if i in flip:
            labels[1 if index.multilabel else 0] = 1 - labels[1 if index.multilabel else 0]
        out.append((Path(rel[i]).name if name_only else rel[i], labels))
    return out


def test_nih_bare_names_any_fraction(tmp_path):
    index = nih_index(tmp_path / "NIH")
    folder = write_lists(tmp_path / "lists", {
        "train_1.txt": rows(index, [0, 12], name_only=True), "train_10.txt": rows(index, [0, 3, 12], name_only=True),
        "train_list.txt": rows(index, range(0, 14), name_only=True),
        "val_list.txt": rows(index, [14, 15], name_only=True), "test_list.txt": rows(index, [16, 17, 18], True)})
    for fraction, train in ((1, [0, 12]), (10, [0, 3, 12]), (100, list(range(14)))):
        out, splits, report = splits_from_lists(index, folder, fraction)
        assert splits["train"].tolist() == train and splits["val"].tolist() == [14, 15]
        assert splits["test"].tolist() == [16, 17, 18] and splits["train"].dtype == np.int64
        assert report.counts == {"train": len(train), "val": 2, "test": 3} and report.label_disagreements == 0
        assert np.array_equal(out.labels, index.labels)
    paths, labels = read_split_list(folder / "train_1.txt")
    assert paths == ["00000000_000.png", "00000012_000.png"] and labels.shape == (2, 14)


def test_label_disagreements_counted_and_labels_from(tmp_path):
    index = nih_index(tmp_path / "NIH")
    folder = write_lists(tmp_path / "lists", {
        "train_list.txt": rows(index, range(10), name_only=True, flip=(2, 5)),
        "val_list.txt": rows(index, [10], True), "test_list.txt": rows(index, [11], True, flip=(11,))})
    out, _, report = splits_from_lists(index, folder, 100)
    assert report.label_disagreements == 3 and len(report.disagreement_examples) == 3
    assert report.disagreement_examples[0].startswith("00000002_000.png: Cardiomegaly list ")
    expected = index.labels.copy()
    expected[[2, 5, 11], 1] = 1 - expected[[2, 5, 11], 1]
    assert np.array_equal(out.labels, expected) and not np.array_equal(out.labels, index.labels)
    kept, _, report = splits_from_lists(index, folder, 100, labels_from="dataset")
    assert report.label_disagreements == 3 and np.array_equal(kept.labels, index.labels)
    assert "3 images whose list labels differ" in report.summary()
    with pytest.raises(DataError, match="labels_from"):
        splits_from_lists(index, folder, 100, labels_from="both")


def test_rsna_dicom_paths_single_label(tmp_path):
    root = tmp_path / "rsna"
    ids = [f"id{k:03d}" for k in range(8)]
    index = DatasetIndex(name="rsna_pneumonia", paths=[root / "stage_2_train_images" / f"{i}.dcm" for i in ids],
                         labels=[0, 1, 0, 0, 1, 1, 0, 0], class_names=["normal", "pneumonia"], groups=ids,
                         root=str(root))
    folder = write_lists(tmp_path / "lists", {
        "train_10.txt": [(f"stage_2_train_images/{ids[0]}.dcm", [0]), (f"stage_2_train_images/{ids[1]}.dcm", [1])],
        "val_list.txt": [(f"stage_2_train_images/{ids[2]}.dcm", [1])],  # dataset says normal
        "test_list.txt": [(f"stage_2_train_images/{i}.dcm", [int(index.labels[k + 3])]) for k, i in enumerate(ids[3:])]})
    out, splits, report = splits_from_lists(index, folder, 10)
    assert [splits[s].tolist() for s in ("train", "val", "test")] == [[0, 1], [2], [3, 4, 5, 6, 7]]
    assert report.label_disagreements == 1 and "list pneumonia, dataset normal" in report.disagreement_examples[0]
    assert out.labels.tolist() == [0, 1, 1, 0, 1, 1, 0, 0] and out.labels.dtype == np.int64


def test_chexpert_paths_with_repeated_file_names(tmp_path):
    root = tmp_path / "data"
    rel = [f"CheXpert-v1.0-small/train/patient{p:05d}/study1/view1_frontal.jpg" for p in range(1, 7)]
    labels = np.eye(6, 5, dtype=np.float32)
    labels[5, 0] = -1  # an uncertain label under the 'ignore' policy: never a disagreement
    index = DatasetIndex(name="chexpert", paths=[root / r for r in rel], labels=labels, class_names=list(COMPETITION),
                         multilabel=True, groups=[f"patient{p:05d}" for p in range(1, 7)], root=str(root))
    folder = write_lists(tmp_path / "lists", {
        "train_1.txt": [(rel[0], [1, 0, 0, 0, 0]), (rel[1], [0, 1, 0, 0, 0])],
        "val_list.txt": [(rel[2], [0, 0, 1, 0, 0]), (rel[3], [0, 0, 0, 1, 0])],
        "test_list.txt": [(rel[4], [0, 0, 0, 0, 1]), (rel[5], [1, 0, 0, 0, 0])]})
    out, splits, report = splits_from_lists(index, folder, 1)
    assert [splits[s].tolist() for s in ("train", "val", "test")] == [[0, 1], [2, 3], [4, 5]]
    assert report.label_disagreements == 0
    # a full-resolution copy whose folder has the other name still matches (path without its first folder)
    renamed = DatasetIndex(name="chexpert", paths=[root / r.replace("-small", "") for r in rel], labels=labels,
                           class_names=list(COMPETITION), multilabel=True, root=str(root))
    assert splits_from_lists(renamed, folder, 1)[1]["test"].tolist() == [4, 5]


def test_missing_images_wrong_widths_and_files(tmp_path):
    index = nih_index(tmp_path / "NIH")
    names = [(f"9999999{k}_000.png", [0] * 14) for k in range(7)]
    folder = write_lists(tmp_path / "lists", {"train_list.txt": rows(index, range(5), True) + names,
                                              "val_list.txt": rows(index, [5], True),
                                              "test_list.txt": rows(index, [6], True)})
    with pytest.raises(DataError, match=r"7 images of the split lists .* 99999990_000.png, 99999991_000.png"):
        splits_from_lists(index, folder, 100)
    with pytest.raises(DataError, match="lacks train_1.txt"):
        splits_from_lists(index, folder, 1)
    write_lists(folder, {"train_list.txt": [(n, [0] * 5) for n, _ in rows(index, range(3), True)]})
    with pytest.raises(DataError, match="5 labels per line, but chestxray14 has 14 classes"):
        splits_from_lists(index, folder, 100)
    write_lists(folder, {"train_list.txt": rows(index, range(3), True) + rows(index, [5], True)})
    with pytest.raises(DataError, match="also listed in"):
        splits_from_lists(index, folder, 100)
    (folder / "train_list.txt").write_text("00000000_000.png 0 2 0\n")
    with pytest.raises(DataError, match="must be 0 or 1"):
        splits_from_lists(index, folder, 100)
    with pytest.raises(DataError, match="does not exist"):
        splits_from_lists(index, tmp_path / "nowhere", 100)
