"""Classification metrics: macro-F1 (the paper's headline), accuracy, balanced accuracy, AUROC,
per-class F1 and AUROC; multi-label: macro AUROC is the headline.

Macro scores are means over the classes for which the score is *defined in the evaluated split*;
a class that cannot be scored there is listed in ``undefined_classes`` and never counted as 0:

- multi-label, label j: AUROC needs positives and negatives of j; F1 needs at least one positive.
  A target of -1 (an uncertain label under an ``ignore`` policy) is left out of that label's scores.
- single-label, class k: F1 and recall (balanced accuracy) need at least one sample of k; one-vs-rest
  AUROC needs samples of k and of another class.

How this relates to scikit-learn (the tests check each equality):

- ``balanced_accuracy`` = ``balanced_accuracy_score(y, pred)``: scikit-learn averages recall over the
  classes in its confusion matrix and drops those without true samples (warning "y_pred contains
  classes not in y_true") - the same classes we leave out.
- ``f1_macro`` = ``f1_score(y, pred, average="macro", labels=present)`` with ``present`` the classes
  that have a true sample (multi-label: a positive). scikit-learn's default ``labels`` is every class
  in y_true *or* y_pred, and a class never present but predicted (or, multi-label, a label without
  positives) enters its mean as 0 (``zero_division``); we follow the ``labels=present`` convention.
- ``auroc`` = ``roc_auc_score`` over the defined columns (multi-label: ``roc_auc_score(Y[:, d],
  P[:, d], average="macro")``; single-label: the one-vs-rest mean over defined classes, equal to
  ``roc_auc_score(y, P, multi_class="ovr")`` when every class is present and to the binary AUROC of
  the positive class for two classes). For a label with one class only, scikit-learn (1.9) warns
  "Only one class is present in y_true" and gives NaN for it, so its macro mean is NaN; it refuses a
  multi-class y_true that lacks a column of the scores (ValueError); torchmetrics scores such a
  class 0 (with a warning) and averages it in. Here AUROC is NaN only when no class is defined.
- ``accuracy``: single-label, the fraction of correct argmax predictions (``accuracy_score``);
  multi-label, the mean over labels of per-label accuracy at 0.5 (``1 - hamming_loss``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torchmetrics.functional.classification as M

IGNORE = -1  # multi-label target value left out of the scores


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, class_names: list[str],
                           multilabel: bool = False) -> dict:
    """Metrics for one split. ``logits`` [N, C]; ``targets`` [N] (int) or [N, C] (0/1, -1 = ignore).

    Scalars: f1_macro, accuracy, balanced_accuracy (single-label), auroc. Per class:
    ``per_class_f1`` and ``auroc_per_class`` ({class: value or None where undefined}),
    ``undefined_classes`` ({"auroc": [...], "f1_macro": [...]}: classes left out of those means),
    single-label also ``confusion_matrix``. ``headline`` names the selection metric.
    """
    logits = logits.float()
    if multilabel:
        return _multilabel(torch.sigmoid(logits), targets.long(), list(class_names))
    return _multiclass(torch.softmax(logits, dim=1), targets.long(), list(class_names))


def _multilabel(probs: torch.Tensor, t: torch.Tensor, names: list[str]) -> dict:
    auroc, f1, acc = {}, {}, []
    for j, name in enumerate(names):
        valid = t[:, j] != IGNORE
        p, y = probs[valid, j], t[valid, j]
        n_pos = int(y.sum())
        if len(y):
            acc.append(M.binary_accuracy(p, y).item())
        f1[name] = M.binary_f1_score(p, y).item() if n_pos else None
        auroc[name] = M.binary_auroc(p, y).item() if 0 < n_pos < len(y) else None
    out = {"auroc": _mean(auroc), "f1_macro": _mean(f1), "accuracy": float(np.mean(acc)) if acc else math.nan,
           "auroc_per_class": auroc, "per_class_f1": f1,
           "undefined_classes": {"auroc": _undefined(auroc), "f1_macro": _undefined(f1)},
           "headline": "auroc"}
    return out


def _multiclass(probs: torch.Tensor, t: torch.Tensor, names: list[str]) -> dict:
    c = len(names)
    support = torch.bincount(t, minlength=c)
    present = [bool(support[k] > 0) for k in range(c)]
    f1_all = M.multiclass_f1_score(probs, t, num_classes=c, average=None).tolist()
    recall_all = M.multiclass_recall(probs, t, num_classes=c, average=None).tolist()
    f1 = {n: (float(v) if ok else None) for n, v, ok in zip(names, f1_all, present)}
    recall = [float(v) for v, ok in zip(recall_all, present) if ok]
    auroc = {}
    for k, name in enumerate(names):
        y = (t == k).long()
        auroc[name] = M.binary_auroc(probs[:, k], y).item() if 0 < int(support[k]) < len(t) else None
    return {
        "f1_macro": _mean(f1),
        "accuracy": M.multiclass_accuracy(probs, t, num_classes=c, average="micro").item(),
        "balanced_accuracy": float(np.mean(recall)) if recall else math.nan,
        "auroc": _mean(auroc),
        "per_class_f1": f1,
        "auroc_per_class": auroc,
        "undefined_classes": {"auroc": _undefined(auroc), "f1_macro": _undefined(f1)},
        "confusion_matrix": M.multiclass_confusion_matrix(probs, t, num_classes=c).tolist(),
        "headline": "f1_macro",
    }


def _mean(per_class: dict) -> float:
    vals = [v for v in per_class.values() if v is not None]
    return float(np.mean(vals)) if vals else math.nan


def _undefined(per_class: dict) -> list[str]:
    return [name for name, v in per_class.items() if v is None]


def undefined_notes(metrics: dict, split: str) -> list[str]:
    """Data notes naming the classes of one split that were left out of its macro means."""
    undefined = metrics.get("undefined_classes") or {}
    also = "" if metrics.get("headline") == "auroc" else " and balanced accuracy"
    notes = []
    if undefined.get("f1_macro"):
        notes.append(f"{split}: no positive sample of {', '.join(undefined['f1_macro'])}: "
                     f"left out of macro F1{also} (not scored 0)")
    if undefined.get("auroc"):
        notes.append(f"{split}: no positives or no negatives of {', '.join(undefined['auroc'])}: "
                     f"left out of macro AUROC (not scored 0)")
    return notes


def headline(metrics: dict) -> float:
    return float(metrics[metrics["headline"]])


def aggregate(per_seed: list[dict]) -> dict:
    """Mean, std (sample, ddof=1 where >1 seed) and values of every scalar metric across seeds."""
    keys = [k for k, v in per_seed[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    out = {}
    for k in keys:
        vals = [float(m[k]) for m in per_seed if k in m]
        arr = np.array(vals, dtype=float)
        std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
        out[k] = {"mean": float(arr.mean()), "std": std if not math.isnan(std) else 0.0, "values": vals}
    return out


def masked_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE over the known labels only: a target of -1 (IGNORE, e.g. CheXpert's uncertain labels under
    the ``ignore`` policy) is left out of the loss, as it is of the metrics."""
    known = target >= 0
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target.clamp(min=0), reduction="none")
    return (loss * known).sum() / known.sum().clamp(min=1)


def loss_for(multilabel: bool, label_smoothing: float = 0.0):
    """The training loss: masked BCE for multi-label, cross-entropy (with label smoothing) otherwise."""
    return masked_bce if multilabel else torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing)
