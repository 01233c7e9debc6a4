"""MED-PEFT's (and MRM's) official split lists: train / val / test on exactly the listed images.

A split-list folder holds ``train_1.txt``, ``train_10.txt``, ``train_list.txt`` (1%, 10%, 100% of the
labelled training images), ``val_list.txt`` and ``test_list.txt``; each line is one image::

    relative/path l1 l2 ... lK

with space-separated 0/1 labels: NIH ChestX-ray14 lines name only the file (``00003547_001.png``, 14 labels
in NIH's order), RSNA lines read ``stage_2_train_images/<patientId>.dcm`` (1 label: pneumonia), CheXpert
lines start at ``CheXpert-v1.0-small/`` (the 5 competition labels). A listed path is matched to the dataset
index by its path relative to the index root, else that path without its first folder (a renamed
dataset folder), else, where the name is unique in the index, by file name alone (wherever the dataset
keeps its images).

The lists' labels are checked against the dataset's own: disagreements are counted and the first few
reported; ``labels_from="list"`` (default, MED-PEFT's labels) or ``"dataset"`` decides which are used.
A listed image not in the index is a DataError (count and the first paths).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import DataError, short_list
from .index import DatasetIndex

TRAIN_FILES = {1: "train_1.txt", 10: "train_10.txt", 100: "train_list.txt"}
EVAL_FILES = {"val": "val_list.txt", "test": "test_list.txt"}
LABELS_FROM = ("list", "dataset")
EXPECTED = """split-list folder/
  train_1.txt  train_10.txt  train_list.txt   (1%, 10%, 100% of the training labels)
  val_list.txt  test_list.txt
  each line: relative/path l1 ... lK   (0/1 labels, space-separated)"""
EXAMPLES = 5


@dataclass
class SplitListReport:
    """What using the lists did; saved with the splits (meta) and in results.json."""

    folder: str
    label_fraction: int
    files: dict[str, str]
    counts: dict[str, int]
    labels_from: str
    label_disagreements: int = 0
    disagreement_examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"folder": self.folder, "label_fraction": self.label_fraction, "files": dict(self.files),
                "counts": dict(self.counts), "labels_from": self.labels_from,
                "label_disagreements": self.label_disagreements,
                "disagreement_examples": list(self.disagreement_examples)}

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        text = f"split lists {self.folder} at {self.label_fraction}%: {counts}"
        if self.label_disagreements:
            text += (f"; {self.label_disagreements} images whose list labels differ from the dataset's "
                     f"(using the {self.labels_from}'s), e.g. {self.disagreement_examples[0]}")
        return text


def read_split_list(path) -> tuple[list[str], np.ndarray]:
    """(paths, float32 [N, K] labels) of one list file; DataError on a malformed line."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"{path} could not be read ({exc}).") from exc
    paths, labels, width = [], [], None
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        try:
            values = [float(v) for v in parts[1:]]
        except ValueError:
            raise DataError(f"{path}:{number}: expected 'relative/path l1 ... lK' with 0/1 labels, "
                            f"got {line.strip()[:120]!r}.\nExpected:\n{EXPECTED}") from None
        if not values or any(v not in (0.0, 1.0) for v in values):
            raise DataError(f"{path}:{number}: labels must be 0 or 1 (at least one), got {parts[1:]}.")
        if width is not None and len(values) != width:
            raise DataError(f"{path}:{number}: {len(values)} labels, but earlier lines have {width}.")
        width = len(values)
        paths.append(parts[0].replace("\\", "/"))
        labels.append(values)
    if not paths:
        raise DataError(f"{path} lists no images.\nExpected:\n{EXPECTED}")
    return paths, np.asarray(labels, dtype=np.float32)


def list_files(folder, label_fraction: int) -> dict[str, Path]:
    """The list file of each split for this label fraction; DataError naming what is missing."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"split-list folder {folder} does not exist.\nExpected:\n{EXPECTED}")
    train = TRAIN_FILES.get(int(label_fraction), f"train_{int(label_fraction)}.txt")
    files = {"train": folder / train, **{k: folder / v for k, v in EVAL_FILES.items()}}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        found = sorted(p.name for p in folder.iterdir() if p.suffix == ".txt")
        raise DataError(f"{folder} lacks {', '.join(missing)} (label fraction {label_fraction}%); it holds "
                        f"{short_list(found) or 'no .txt files'}.\nExpected:\n{EXPECTED}")
    return files


class _Matcher:
    """Listed path -> index position: full relative path, then without the first folder, then unique name."""

    def __init__(self, index: DatasetIndex):
        rel = index.relpaths()
        self.full = {p: i for i, p in enumerate(rel)}
        self.tail = {}
        for i, p in enumerate(rel):
            if "/" in p:
                self.tail.setdefault(p.split("/", 1)[1], i)
        names = Counter(os.path.basename(p) for p in rel)
        self.name = {os.path.basename(p): i for i, p in enumerate(rel) if names[os.path.basename(p)] == 1}

    def __call__(self, path: str) -> int:
        path = path.removeprefix("./")
        for table, key in ((self.full, path), (self.tail, path.split("/", 1)[-1]), (self.tail, path),
                           (self.name, os.path.basename(path))):
            i = table.get(key)
            if i is not None:
                return i
        return -1


def _list_labels_as_index(labels: np.ndarray, index: DatasetIndex, source: Path) -> np.ndarray:
    """The list's 0/1 columns in the index's label encoding (multi-label matrix or class ids)."""
    k, c = labels.shape[1], index.num_classes()
    if index.multilabel:
        if k != c:
            raise DataError(f"{source}: {k} labels per line, but {index.name} has {c} classes {index.class_names}.")
        return labels
    if k == 1 and c == 2:  # binary: the label is the positive class (RSNA: pneumonia)
        return labels[:, 0].astype(np.int64)
    if k == c and (labels.sum(axis=1) == 1).all():
        return labels.argmax(axis=1).astype(np.int64)
    raise DataError(f"{source}: {k} labels per line cannot encode the {c} classes of {index.name} "
                    f"(expected 1 label for 2 classes, or one-hot over {c}).")


def _disagreement(index: DatasetIndex, pos: int, row) -> str | None:
    """How the list's labels `row` differ from the dataset's for image `pos` (None: they agree)."""
    if index.multilabel:
        own = index.labels[pos]
        known = own >= 0  # a masked (-1) dataset label cannot disagree
        diff = [index.class_names[j] for j in np.flatnonzero(known & ((own > 0.5) != (row > 0.5)))]
        if not diff:
            return None
        return ", ".join(f"{n} list {int(row[index.class_names.index(n)])} dataset "
                         f"{int(own[index.class_names.index(n)] > 0.5)}" for n in diff)
    if int(index.labels[pos]) == int(row):
        return None
    return f"list {index.class_names[int(row)]}, dataset {index.class_names[int(index.labels[pos])]}"


def splits_from_lists(index: DatasetIndex, folder, label_fraction: int = 100, labels_from: str = "list",
                      ) -> tuple[DatasetIndex, dict[str, np.ndarray], SplitListReport]:
    """(index with the labels used, {"train", "val", "test"}: sorted int64 positions, report).

    ``label_fraction`` 1, 10 or 100 picks train_1.txt, train_10.txt or train_list.txt (another N:
    train_N.txt). With ``labels_from="list"`` the listed images take the list's labels.
    """
    if labels_from not in LABELS_FROM:
        raise DataError(f"labels_from must be one of {list(LABELS_FROM)}, not {labels_from!r}.")
    files = list_files(folder, label_fraction)
    match = _Matcher(index)
    labels = index.labels.copy()
    splits, missing, disagree, examples, owner = {}, [], 0, [], {}
    for split, path in files.items():
        paths, raw = read_split_list(path)
        wanted = _list_labels_as_index(raw, index, path)
        positions = []
        for p, row in zip(paths, wanted):
            i = match(p)
            if i < 0:
                missing.append(p)
                continue
            if owner.setdefault(i, split) != split:
                raise DataError(f"{path.name}: {p} is also listed in {files[owner[i]].name}; a split list "
                                f"folder must not share images between train, val and test.")
            positions.append(i)
            why = _disagreement(index, i, row)
            if why is not None:
                disagree += 1
                if len(examples) < EXAMPLES:
                    examples.append(f"{p}: {why}")
                if labels_from == "list":
                    labels[i] = row
        splits[split] = np.asarray(sorted(set(positions)), dtype=np.int64)
    if missing:
        raise DataError(f"{len(missing)} images of the split lists in {folder} are not in the {index.name} "
                        f"dataset under {index.root} (missing on disk, unreadable, or outside the label table): "
                        f"{short_list(missing, 5)}.")
    report = SplitListReport(folder=str(folder), label_fraction=int(label_fraction),
                             files={k: v.name for k, v in files.items()},
                             counts={k: int(len(v)) for k, v in splits.items()}, labels_from=labels_from,
                             label_disagreements=disagree, disagreement_examples=examples)
    if labels_from == "list" and disagree:
        index = replace(index, labels=labels, notes=list(index.notes) + [
            f"{disagree} listed images take the split lists' labels, which differ from the dataset's"])
    return index, splits, report
