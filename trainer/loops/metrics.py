"""Classification metrics with torchmetrics: macro-F1 (the paper's headline), accuracy,
balanced accuracy, per-class F1 and AUROC; multi-label: macro AUROC is the headline."""
from __future__ import annotations

import math

import numpy as np
import torch
import torchmetrics.functional.classification as M


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, class_names: list[str],
                           multilabel: bool = False) -> dict:
    """Metrics for one split. ``logits`` [N, C]; ``targets`` [N] (int) or [N, C] (0/1)."""
    logits = logits.float()
    c = len(class_names)
    if multilabel:
        probs = torch.sigmoid(logits)
        t = targets.int()
        out = {
            "auroc": M.multilabel_auroc(probs, t, num_labels=c, average="macro").item(),
            "f1_macro": M.multilabel_f1_score(probs, t, num_labels=c, average="macro").item(),
            "accuracy": M.multilabel_accuracy(probs, t, num_labels=c, average="macro").item(),
        }
        per_class = M.multilabel_auroc(probs, t, num_labels=c, average=None)
        out["per_class_auroc"] = dict(zip(class_names, _floats(per_class)))
        out["headline"] = "auroc"
        return out
    probs = torch.softmax(logits, dim=1)
    t = targets.long()
    out = {
        "f1_macro": M.multiclass_f1_score(probs, t, num_classes=c, average="macro").item(),
        "accuracy": M.multiclass_accuracy(probs, t, num_classes=c, average="micro").item(),
        "balanced_accuracy": M.multiclass_recall(probs, t, num_classes=c, average="macro").item(),
    }
    try:
        out["auroc"] = M.multiclass_auroc(probs, t, num_classes=c, average="macro").item()
    except ValueError:
        out["auroc"] = float("nan")
    out["per_class_f1"] = dict(zip(class_names, _floats(
        M.multiclass_f1_score(probs, t, num_classes=c, average=None))))
    out["confusion_matrix"] = M.multiclass_confusion_matrix(probs, t, num_classes=c).tolist()
    out["headline"] = "f1_macro"
    return out


def _floats(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.tolist()]


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
