"""Subgroup metrics over a whole split: per-group headline, worst group, gap, fairness differences.

For each subgroup attribute (DatasetIndex.subgroups: sex, age, skin type, ...) and each of its values:

- the split's headline score (macro-F1 single-label, macro AUROC multi-label: metrics.classification_metrics
  on that group's images, so the same "defined classes only" rules), accuracy and the image count.
  A group with fewer than ``min_size`` images (default 30) is listed with ``scored: false`` and no score.
- ``worst_group`` / ``worst_score``, ``best_group`` and ``gap`` (best - worst), over the scored groups
  other than "unknown" (a missing value is reported as a group but is not a demographic group).
- ``equalized_odds_difference`` and ``demographic_parity_difference`` (fairlearn's, ``between_groups``):
  binary definitions applied one-vs-rest per class (single-label, prediction = argmax) or per label
  (multi-label, prediction = sigmoid > 0.5), over the same groups; the attribute's value is the largest
  over classes, ``per_class`` keeps each. Equalized odds needs positives and negatives of the class in a
  group (fairlearn counts an undefined rate as 0), so groups without them sit out that class; a class with
  fewer than two such groups is left out (None). Hardt et al. 2016 (equalized odds); fairlearn's docs.

Seyyed-Kalantari et al. 2021 and FairTune (Dutt et al. 2024) report exactly these worst-group / gap views.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

from ..data.subgroups import UNKNOWN, group_order
from .metrics import IGNORE, classification_metrics

MIN_GROUP_SIZE = 30


def _tensor(x) -> torch.Tensor:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _number(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def group_scores(logits, targets, values, class_names, multilabel: bool = False,
                 min_size: int = MIN_GROUP_SIZE) -> dict:
    """{value: {"n", "scored", "score", "accuracy"}} for one attribute's per-image `values`."""
    logits, targets = _tensor(logits).float(), _tensor(targets)
    values = np.asarray(values).astype(str)
    out = {}
    for value in sorted(set(values.tolist()), key=group_order):
        rows = torch.as_tensor(np.flatnonzero(values == value))
        entry = {"n": int(len(rows)), "scored": len(rows) >= min_size, "score": None, "accuracy": None}
        if entry["scored"]:
            m = classification_metrics(logits[rows], targets[rows], class_names, multilabel)
            entry["score"], entry["accuracy"] = _number(m[m["headline"]]), _number(m["accuracy"])
        out[value] = entry
    return out


def _binary_problems(logits: torch.Tensor, targets: torch.Tensor, class_names, multilabel: bool):
    """(class name, y_true 0/1, y_pred 0/1, valid mask) per class: one-vs-rest or per label."""
    if multilabel:
        pred = (torch.sigmoid(logits) > 0.5).numpy().astype(int)
        t = targets.numpy()
        for j, name in enumerate(class_names):
            yield name, (t[:, j] == 1).astype(int), pred[:, j], t[:, j] != IGNORE
    else:
        pred = logits.argmax(dim=1).numpy()
        t = targets.numpy()
        for k, name in enumerate(class_names):
            yield name, (t == k).astype(int), (pred == k).astype(int), np.ones(len(t), dtype=bool)


def fairness_differences(logits, targets, values, class_names, multilabel: bool = False,
                         keep_groups=None) -> dict:
    """Equalized-odds and demographic-parity differences (largest over classes, and per class).

    keep_groups: the attribute values taking part (default: all); other images are left out.
    """
    logits, targets = _tensor(logits).float(), _tensor(targets)
    values = np.asarray(values).astype(str)
    keep = np.ones(len(values), dtype=bool) if keep_groups is None else np.isin(values, list(keep_groups))
    per_class = {}
    for name, y, pred, valid in _binary_problems(logits, targets, class_names, multilabel):
        rows = keep & valid
        g, y, pred = values[rows], y[rows], pred[rows]
        dp = demographic_parity_difference(y, pred, sensitive_features=g) if len(set(g)) >= 2 else None
        both = [v for v in set(g) if 0 < y[g == v].sum() < (g == v).sum()]
        eo = None
        if len(both) >= 2:
            m = np.isin(g, both)
            eo = equalized_odds_difference(y[m], pred[m], sensitive_features=g[m])
        per_class[name] = {"equalized_odds_difference": _number(eo), "demographic_parity_difference": _number(dp)}

    def largest(key):
        vals = [c[key] for c in per_class.values() if c[key] is not None]
        return max(vals) if vals else None

    return {"equalized_odds_difference": largest("equalized_odds_difference"),
            "demographic_parity_difference": largest("demographic_parity_difference"),
            "per_class": per_class}


def subgroup_metrics(logits, targets, subgroups: dict, class_names, multilabel: bool = False,
                     min_size: int = MIN_GROUP_SIZE) -> dict:
    """Fairness report of one split for every attribute in `subgroups` (name -> per-image values).

    Returns {"headline", "min_group_size", "worst_group_score", "attributes": {name: {"groups",
    "too_small", "scored_groups", "worst_group", "worst_score", "best_group", "best_score", "gap",
    "equalized_odds_difference", "demographic_parity_difference", "per_class"}}}; worst_group_score is
    the lowest worst_score over the attributes (None when no attribute has a scored group).
    """
    logits, targets = _tensor(logits).float(), _tensor(targets)
    attributes = {}
    for attr, values in subgroups.items():
        values = np.asarray(values).astype(str)
        if values.shape != (len(logits),):
            raise ValueError(f"subgroup {attr!r}: {values.shape[0]} values for {len(logits)} predictions")
        groups = group_scores(logits, targets, values, class_names, multilabel, min_size)
        ranked = sorted(((g["score"], v) for v, g in groups.items()
                         if g["scored"] and g["score"] is not None and v != UNKNOWN))
        entry = {"groups": groups, "too_small": [v for v, g in groups.items() if not g["scored"]],
                 "scored_groups": len(ranked), "worst_group": None, "worst_score": None, "best_group": None,
                 "best_score": None, "gap": None}
        if len(ranked) >= 2:
            (worst, w), (best, b) = ranked[0], ranked[-1]
            entry.update(worst_group=w, worst_score=worst, best_group=b, best_score=best, gap=best - worst)
        elif ranked:  # one group scored: no comparison, but its score still bounds FairTune's selection
            entry["worst_score"] = ranked[0][0]
        entry.update(fairness_differences(logits, targets, values, class_names, multilabel,
                                          keep_groups=[v for _, v in ranked]))
        attributes[attr] = entry
    worst = [a["worst_score"] for a in attributes.values() if a["worst_score"] is not None]
    return {"headline": "auroc" if multilabel else "f1_macro", "min_group_size": int(min_size),
            "worst_group_score": min(worst) if worst else None, "attributes": attributes}


def worst_group_text(entry: dict, score_text) -> str:
    """One attribute's worst-group summary for people: ``worst F: 71.20, gap 4.10``, or, with fewer than
    two groups scored, ``n/a: 1 group scored`` (no comparison exists). ``score_text`` formats a score."""
    n = entry.get("scored_groups")
    if n is None:  # results written before scored_groups was recorded
        n = 2 if entry.get("worst_group") is not None else 0
    if isinstance(n, dict):  # mean over seeds
        n = int(n.get("min", n.get("mean", 0)) or 0)
    if n < 2 or entry.get("worst_group") is None:
        return f"n/a: {n} group{'' if n == 1 else 's'} scored"
    return f"worst {entry['worst_group']}: {score_text(entry.get('worst_score'))}, gap {score_text(entry.get('gap'))}"
