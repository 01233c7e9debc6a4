"""DatasetIndex: what every dataset loader returns (paths, labels, classes, groups, subgroups, official test)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import numpy as np

from .errors import DataError


@dataclass
class DatasetIndex:
    """An indexed dataset: image paths with their labels.

    labels: int64 [N] class ids (single-label) or float32 [N, C] 0/1 (multi-label; -1 = unknown, e.g. a
        CheXpert uncertain label under the 'ignore' policy: left out of the loss and the metrics).
    groups: e.g. lesion or patient id per image; splits never separate a group.
    subgroups: demographic / clinical attributes for fairness metrics, attribute name -> str array [N]
        of per-image values, e.g. {"sex": ["F", "M", ...], "age": ["<40", "60-79", ...]}. Values are
        already normalised and binned by the loader (trainer/data/subgroups.py: normalise_sex,
        bin_ages, ...); a missing value is "unknown", never dropped. Kept aligned by subset().
        Empty dict when the dataset carries no such metadata.
    official_test: bool [N] where the dataset defines its own test list.
    root: the data_dir the paths were found under (saved splits store paths relative to it).
    """

    name: str
    paths: list[str]
    labels: np.ndarray
    class_names: list[str]
    multilabel: bool = False
    groups: list[str] | None = None
    official_test: np.ndarray | None = None
    subgroups: dict[str, np.ndarray] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    root: str | None = None

    def __post_init__(self) -> None:
        n = len(self.paths)
        self.paths = [str(p) for p in self.paths]
        if self.multilabel:
            self.labels = np.asarray(self.labels, dtype=np.float32)
            if self.labels.ndim != 2 or self.labels.shape != (n, len(self.class_names)):
                raise DataError(f"{self.name}: multi-label labels must have shape "
                                f"[{n}, {len(self.class_names)}], found {self.labels.shape}.")
        else:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            if self.labels.shape != (n,):
                raise DataError(f"{self.name}: labels must have shape [{n}], found {self.labels.shape}.")
            if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
                raise DataError(f"{self.name}: label ids must lie in 0..{len(self.class_names) - 1}.")
        if self.groups is not None:
            self.groups = [str(g) for g in self.groups]
            if len(self.groups) != n:
                raise DataError(f"{self.name}: {len(self.groups)} groups for {n} images.")
        self.subgroups = {str(k): np.asarray(v).astype(str) for k, v in (self.subgroups or {}).items()}
        for key, values in self.subgroups.items():
            if values.shape != (n,):
                raise DataError(f"{self.name}: subgroup {key!r} has {values.shape} values for {n} images.")
        if self.official_test is not None:
            self.official_test = np.asarray(self.official_test, dtype=bool)
            if self.official_test.shape != (n,):
                raise DataError(f"{self.name}: official_test must have shape [{n}].")
        if self.root is None and n:
            self.root = os.path.commonpath([os.path.dirname(p) for p in self.paths])

    def __len__(self) -> int:
        return len(self.paths)

    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> dict[str, int]:
        """Images per class (positives per class for multi-label)."""
        if self.multilabel:
            counts = (self.labels > 0.5).sum(axis=0)
        else:
            counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {c: int(k) for c, k in zip(self.class_names, counts)}

    def relpaths(self) -> list[str]:
        """Paths relative to `root`, with '/' separators (portable between machines)."""
        root = self.root or ""
        return [os.path.relpath(p, root).replace(os.sep, "/") for p in self.paths]

    def subset(self, keep, note: str | None = None) -> "DatasetIndex":
        """A new index with only the images selected by `keep` (bool mask or positions)."""
        keep = np.asarray(keep)
        pos = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64)
        notes = list(self.notes) + ([note] if note else [])
        return replace(
            self,
            paths=[self.paths[i] for i in pos],
            labels=self.labels[pos],
            groups=None if self.groups is None else [self.groups[i] for i in pos],
            official_test=None if self.official_test is None else self.official_test[pos],
            subgroups={k: v[pos] for k, v in self.subgroups.items()},
            notes=notes,
        )

    def summary(self) -> str:
        """One line: name, size, classes and counts."""
        counts = ", ".join(f"{c}={k}" for c, k in self.class_counts().items())
        kind = "multi-label" if self.multilabel else "single-label"
        return f"{self.name}: {len(self)} images, {self.num_classes()} classes ({kind}): {counts}"
