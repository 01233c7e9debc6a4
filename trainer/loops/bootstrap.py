"""Bootstrap confidence intervals for a split's headline score.

Percentile bootstrap (Efron & Tibshirani 1993, ch. 13): resample the split with replacement
``n_resamples`` times (default 1,000, seeded), score each resample, and take the 2.5th and 97.5th
percentiles of the scores as the 95% interval. Where the dataset has groups (patients, lesions), whole
groups are resampled (the cluster bootstrap), since images of one patient are not independent.
A resample whose score is undefined (NaN, e.g. a label without positives) is dropped and counted.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from .metrics import IGNORE

N_RESAMPLES = 1000
LEVEL = 0.95


def group_layout(groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions sorted by group, images per group, first sorted position of each group)."""
    _, ids = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    order = np.argsort(ids, kind="stable")
    counts = np.bincount(ids)
    return order, counts, np.concatenate([[0], np.cumsum(counts)[:-1]])


def resample_indices(n: int, rng: np.random.Generator, layout=None) -> np.ndarray:
    """One bootstrap resample of positions 0..n-1: n draws, or (a group_layout given) draws of whole groups."""
    if layout is None:
        return rng.integers(0, n, size=n)
    order, counts, starts = layout
    picked = rng.integers(0, len(counts), size=len(counts))
    lengths = counts[picked]
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return order[np.repeat(starts[picked], lengths) + offsets]


def bootstrap_interval(metric: Callable[[np.ndarray], float], n: int, groups=None,
                       n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = LEVEL) -> dict:
    """Percentile interval of `metric(positions)` over seeded resamples of 0..n-1.

    Returns {"estimate" (the metric on all n), "low", "high", "level", "n_resamples", "n_valid",
    "resampled_by": "group" | "image", "seed"}; low/high are NaN if no resample could be scored.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    if groups is not None and len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} samples")
    layout = None if groups is None else group_layout(groups)
    scores = np.asarray([metric(resample_indices(n, rng, layout)) for _ in range(n_resamples)], dtype=float)
    scores = scores[np.isfinite(scores)]
    alpha = (1 - level) / 2
    low, high = (np.percentile(scores, [100 * alpha, 100 * (1 - alpha)]) if len(scores) else (math.nan, math.nan))
    return {"estimate": float(metric(np.arange(n))), "low": float(low), "high": float(high), "level": level,
            "n_resamples": int(n_resamples), "n_valid": int(len(scores)),
            "resampled_by": "image" if groups is None else "group", "seed": int(seed)}


def headline_metric(logits, targets, multilabel: bool = False) -> Callable[[np.ndarray], float]:
    """positions -> the headline score of those samples, as metrics.classification_metrics defines it.

    Single-label: macro-F1 over the classes with a true sample among them (numpy counts, fast enough
    for 1,000 resamples). Multi-label: macro AUROC over the labels with positives and negatives
    (scikit-learn's roc_auc_score per label); -1 targets are left out.
    """
    logits = (logits.detach().cpu() if isinstance(logits, torch.Tensor) else torch.as_tensor(logits)).float()
    t = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets).astype(np.int64)
    if multilabel:
        scores = torch.sigmoid(logits).numpy()

        def auroc(pos: np.ndarray) -> float:
            vals = []
            for j in range(t.shape[1]):
                y, s = t[pos, j], scores[pos, j]
                keep = y != IGNORE
                y, s = y[keep], s[keep]
                if 0 < y.sum() < len(y):
                    vals.append(roc_auc_score(y, s))
            return float(np.mean(vals)) if vals else math.nan
        return auroc

    pred = logits.argmax(dim=1).numpy()
    c = logits.shape[1]

    def f1_macro(pos: np.ndarray) -> float:
        y, p = t[pos], pred[pos]
        support = np.bincount(y, minlength=c)
        predicted = np.bincount(p, minlength=c)
        tp = np.bincount(y[y == p], minlength=c)
        present = support > 0
        if not present.any():
            return math.nan
        f1 = 2 * tp[present] / (support[present] + predicted[present])
        return float(f1.mean())
    return f1_macro


def headline_interval(logits, targets, multilabel: bool = False, groups=None, n_resamples: int = N_RESAMPLES,
                      seed: int = 0, level: float = LEVEL) -> dict:
    """The bootstrap interval of a split's headline score (see headline_metric and bootstrap_interval)."""
    metric = headline_metric(logits, targets, multilabel)
    out = bootstrap_interval(metric, len(targets), groups=groups, n_resamples=n_resamples, seed=seed, level=level)
    out["metric"] = "auroc" if multilabel else "f1_macro"
    return out
