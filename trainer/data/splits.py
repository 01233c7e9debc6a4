"""Train/val/test splits: stratified, grouped (no patient or lesion in two splits), seeded.

Splits are saved as JSON with image paths relative to the dataset root, so a run can be
reproduced and audited, and reloaded only if they still match the dataset.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from adapters.io import temp_file_beside

from .errors import DataError, short_list
from .index import DatasetIndex

SPLITS = ("train", "val", "test")
FORMAT = "medpeft-splits"
VERSION = 1

# (val_frac, test_frac) per dataset: the training share that reproduces the n_train Dutt et al. 2024
# report (trainer/reference/dutt2024_reported.csv) on the full public dataset, within 1%; counts are
# images (one per patient for RSNA). docs/paper_vs_here.md ("Split sizes") has the table.
SPLIT_DEFAULTS: dict[str, tuple[float, float]] = {
    "breastus": (0.10, 0.15),        # 75%: 585 of 780 images (paper 584)
    "ham10000": (0.10, 0.15),        # 75%: 7,511 of 10,015 (paper 7,511)
    "fitzpatrick17k": (0.10, 0.15),  # 75%: 12,433 of 16,577; the paper's 5,809 is a subset it does not name
    "smdg": (0.10, 0.10),            # 80% of the 12,316 non-suspect images: 9,853 (paper 9,852)
    "rsna_pneumonia": (0.085, 0.15),  # 76.5% (test 15%, val 10% of the rest): 20,413 of 26,684 (paper 20,412)
}
GENERIC_SPLIT = (0.10, 0.20)
"""(val_frac, test_frac) of the other datasets (your own data; chestxray14 carves val from its official list)."""


def default_fractions(dataset: str) -> tuple[float, float]:
    """(val_frac, test_frac) used when a run does not set them: SPLIT_DEFAULTS, else GENERIC_SPLIT."""
    return SPLIT_DEFAULTS.get(str(dataset).lower(), GENERIC_SPLIT)


def _strata(index: DatasetIndex) -> np.ndarray:
    """[N, K] 0/1 matrix of what each image counts towards: its class (single-label), or its
    positive labels plus a final 'no finding' column (multi-label)."""
    n, c = len(index), index.num_classes()
    if index.multilabel:
        pos = (index.labels > 0.5).astype(np.float64)
        return np.concatenate([pos, (pos.sum(axis=1) == 0)[:, None].astype(np.float64)], axis=1)
    onehot = np.zeros((n, c), dtype=np.float64)
    onehot[np.arange(n), index.labels] = 1.0
    return onehot


def _group_ids(index: DatasetIndex, positions: np.ndarray) -> np.ndarray:
    """Integer group id per position (each image is its own group when the index has none)."""
    if index.groups is None:
        return np.arange(len(positions))
    _, ids = np.unique(np.asarray([index.groups[i] for i in positions], dtype=object).astype(str),
                       return_inverse=True)
    return ids


def _assign(strata: np.ndarray, group_ids: np.ndarray, fracs: np.ndarray, rng) -> np.ndarray:
    """Assign whole groups to splits so each split gets about `fracs` of every stratum.

    1. coverage: for each stratum (rarest first) present in at least as many groups as there are
       splits, every split gets one (small) group containing it;
    2. iterative stratification (Sechidis et al. 2011, with groups as units): take the stratum
       with the fewest unassigned images; give each unassigned group containing it (largest
       first, ties in random order) to the split that most lacks that stratum (ties: the split
       that lacks most images); repeat.
    Returns the split number of each image.
    """
    n_groups = int(group_ids.max()) + 1 if len(group_ids) else 0
    counts = np.zeros((n_groups, strata.shape[1]))
    np.add.at(counts, group_ids, strata)
    sizes = np.bincount(group_ids, minlength=n_groups).astype(np.float64)
    active = np.flatnonzero(fracs > 0)
    lacking = fracs[:, None] * counts.sum(axis=0)[None, :]  # images each split still lacks, per stratum
    lacking_size = fracs * sizes.sum()
    split_of = np.full(n_groups, -1)
    got = np.zeros_like(lacking)

    def put(g: int, s: int) -> None:
        split_of[g] = s
        got[s] += counts[g]
        lacking[s] -= counts[g]
        lacking_size[s] -= sizes[g]

    order = rng.permutation(n_groups)
    order = order[np.argsort(-sizes[order], kind="stable")]  # largest first, ties in random order
    has = counts > 0
    groups_with = has.sum(axis=0)

    for k in np.argsort(groups_with, kind="stable"):
        if groups_with[k] < len(active):
            continue
        candidates = iter(order[has[order, k]][::-1])  # smallest groups first
        for s in active[::-1]:  # test, val, then train
            if got[s, k] > 0:
                continue
            for g in candidates:
                if split_of[g] < 0:
                    put(g, int(s))
                    break

    while (split_of < 0).any():
        free = split_of < 0
        remaining = counts[free].sum(axis=0)
        if not remaining.any():  # groups without any stratum: balance sizes only
            for g in order[free[order]]:
                put(g, int(active[int(np.argmax(lacking_size[active]))]))
            break
        k = int(np.argmin(np.where(remaining > 0, remaining, np.inf)))
        for g in order[free[order] & has[order, k]]:
            need = lacking[active, k]
            best = active[need == need.max()]
            s = best[int(np.argmax(lacking_size[best]))] if len(best) > 1 else best[0]
            put(g, int(s))
    return split_of[group_ids]


def _check_fracs(val_frac: float, test_frac: float, fraction: float) -> None:
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise DataError(f"val_frac and test_frac must be >= 0 and sum to less than 1; "
                        f"found val_frac={val_frac}, test_frac={test_frac}.")
    if not 0 < fraction <= 1:
        raise DataError(f"fraction must be in (0, 1]; found {fraction}.")


def _rarest_stratum(strata: np.ndarray) -> np.ndarray:
    """One stratum per image: its rarest positive column (multi-label) or its class."""
    freq = strata.sum(axis=0)
    masked = np.where(strata > 0, freq[None, :], np.inf)
    return masked.argmin(axis=1)


def _subsample_train(train: np.ndarray, index: DatasetIndex, fraction: float, rng) -> np.ndarray:
    """Keep about `fraction` of the training images per stratum, at least one per class."""
    strata = _strata(index)[train]
    key = _rarest_stratum(strata)
    keep = []
    for k in np.unique(key):
        members = train[key == k]
        n = max(1, int(round(fraction * len(members))))
        keep.append(rng.choice(members, size=n, replace=False))
    kept = np.concatenate(keep)
    if index.multilabel:  # every label with a positive in train keeps at least one positive
        for j in range(index.num_classes()):
            positives = train[index.labels[train, j] > 0.5]
            if len(positives) and not (index.labels[kept, j] > 0.5).any():
                kept = np.append(kept, rng.choice(positives))
    return np.unique(kept)


def _check_train_classes(index: DatasetIndex, train: np.ndarray) -> None:
    """Single-label: DataError naming classes that have images but none for training."""
    if index.multilabel:
        have = (index.labels > 0.5).sum(axis=0) > 0
        in_train = (index.labels[train] > 0.5).sum(axis=0) > 0
    else:
        have = np.bincount(index.labels, minlength=index.num_classes()) > 0
        in_train = np.bincount(index.labels[train], minlength=index.num_classes()) > 0
    lacking = [index.class_names[j] for j in np.flatnonzero(have & ~in_train)]
    if not lacking:
        return
    message = (f"{index.name}: class(es) {lacking} have images but none in the training split "
               f"(too few images, or all of them in the official test list).")
    if index.multilabel:
        warnings.warn(message, stacklevel=3)
    else:
        raise DataError(message + " Add images or remove the class.")


def make_splits(index: DatasetIndex, seed: int, val_frac: float | None = None, test_frac: float | None = None,
                fraction: float = 1.0) -> dict[str, np.ndarray]:
    """Split an index into {"train", "val", "test"}: sorted int64 arrays of image positions.

    - val_frac / test_frac None: the dataset's default (default_fractions(index.name)), which
      reproduces the paper's training-set size; shares are of images (groups kept whole);
    - stratified by class (multi-label: by every label and 'no finding'), grouped (a group never
      spans two splits), deterministic for a given seed;
    - with index.official_test, test is that list and val_frac is carved from the remaining images
      (their share of them); test_frac is then ignored;
    - fraction < 1 subsamples the train split only, stratified, keeping at least one image of
      each class. A single-label class without any training image is a DataError.
    """
    default_val, default_test = default_fractions(index.name)
    val_frac = default_val if val_frac is None else val_frac
    test_frac = default_test if test_frac is None else test_frac
    _check_fracs(val_frac, test_frac, fraction)
    n = len(index)
    if n == 0:
        raise DataError(f"{index.name}: the dataset is empty, nothing to split.")
    rng = np.random.default_rng(seed)
    strata = _strata(index)
    split = np.zeros(n, dtype=np.int64)
    if index.official_test is not None and index.official_test.any():
        test_pos = np.flatnonzero(index.official_test)
        pool = np.flatnonzero(~index.official_test)
        if index.groups is not None:
            test_groups = {index.groups[i] for i in test_pos}
            leaking = np.asarray([index.groups[i] in test_groups for i in pool], dtype=bool)
            if leaking.any():
                warnings.warn(f"{index.name}: {int(leaking.sum())} images outside the official test "
                              f"list share a group with it and are left out of train/val.", stacklevel=2)
                split[pool[leaking]] = -1
                pool = pool[~leaking]
        split[test_pos] = 2
        if len(pool):
            fracs = np.asarray([1.0 - val_frac, val_frac, 0.0])
            split[pool] = _assign(strata[pool], _group_ids(index, pool), fracs, rng)
    else:
        everyone = np.arange(n)
        fracs = np.asarray([1.0 - val_frac - test_frac, val_frac, test_frac])
        split[:] = _assign(strata, _group_ids(index, everyone), fracs, rng)
    out = {name: np.flatnonzero(split == s).astype(np.int64) for s, name in enumerate(SPLITS)}
    _check_train_classes(index, out["train"])
    if fraction < 1.0:
        out["train"] = _subsample_train(out["train"], index, fraction, rng).astype(np.int64)
    return out


def save_splits(splits: dict[str, np.ndarray], index: DatasetIndex, path, meta: dict | None = None) -> Path:
    """Write splits as JSON: image paths relative to index.root, class counts, optional meta (seed, ...)."""
    rel = index.relpaths()
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "dataset": index.name,
        "root": index.root,
        "num_images": len(index),
        "class_names": list(index.class_names),
        "meta": dict(meta or {}),
        "counts": {},
        "splits": {},
    }
    for name in [n for n in SPLITS if n in splits]:  # an HPO trial's file leaves out the test split
        pos = np.asarray(splits[name], dtype=np.int64)
        sub = index.subset(pos) if len(pos) else None
        doc["counts"][name] = sub.class_counts() if sub is not None else {c: 0 for c in index.class_names}
        doc["splits"][name] = [rel[i] for i in pos]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)
    return path


def load_splits(path, index: DatasetIndex) -> dict[str, np.ndarray]:
    """Read splits written by save_splits and map them onto `index`.

    DataError if the file is not a splits file, was made for another dataset or class list,
    or names images that the index no longer holds.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} could not be read as a splits JSON file ({exc}).") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "splits" not in doc:
        raise DataError(f"{path} is not a MedPEFT splits file (expected format={FORMAT!r}).")
    if doc.get("dataset") != index.name:
        raise DataError(f"{path} holds splits of dataset {doc.get('dataset')!r}, not {index.name!r}.")
    if doc.get("class_names") != list(index.class_names):
        raise DataError(f"{path}: saved classes {doc.get('class_names')} differ from the dataset's "
                        f"{index.class_names}.")
    lookup = {p: i for i, p in enumerate(index.relpaths())}
    out, missing, seen = {}, [], set()
    for name in SPLITS:
        entries = doc["splits"].get(name, [])
        pos = [lookup.get(p, -1) for p in entries]
        missing += [p for p, i in zip(entries, pos) if i < 0]
        out[name] = np.asarray(sorted(i for i in pos if i >= 0), dtype=np.int64)
        overlap = seen & set(out[name].tolist())
        if overlap:
            raise DataError(f"{path}: {len(overlap)} images appear in more than one split.")
        seen |= set(out[name].tolist())
    if missing:
        raise DataError(f"{path}: {len(missing)} images of the saved splits are not in the dataset "
                        f"under {index.root} any more: {short_list(missing)}.")
    return out
