"""Calibration: expected calibration error, Brier score, NLL; temperature scaling; reliability diagrams.

- ECE (Naeini et al. 2015; Guo et al. 2017): 15 equal-width confidence bins, sum over bins of
  |accuracy - mean confidence| weighted by the bin's share of samples (torchmetrics' calibration error,
  norm "l1"). Single-label: the confidence is the max softmax probability and "accurate" means the
  argmax is right (Guo et al.). Multi-label: per label, the sigmoid probability against the 0/1 target
  (torchmetrics' binary calibration error), averaged over the labels that have targets.
- Brier score as scikit-learn's brier_score_loss: single-label, mean over samples of sum over classes
  of (p - y)^2, halved for two classes (= the binary Brier score of the positive class); multi-label,
  the binary Brier score per label, averaged.
- NLL: single-label cross-entropy (= log_loss); multi-label, binary cross-entropy per label, averaged.
  Targets of -1 (an ignored uncertain label) are left out everywhere.
- Temperature scaling (Guo et al. 2017, the official temperature_scaling.py minimises NLL on the
  validation logits with LBFGS): logits / T with T > 0 fitted on the validation split only; here
  LBFGS optimises log T (keeps T positive). One T for single-label, one per label for multi-label
  (a label whose validation targets are all 0 or all 1 keeps T = 1: its NLL has no finite optimum).
  Dividing by T > 0 never changes the argmax (nor the sign of a logit, so the 0.5 decisions).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchmetrics.functional.classification as M

from .metrics import IGNORE

N_BINS = 15
_LOG_T_RANGE = (math.log(0.05), math.log(20.0))


def _tensor(x) -> torch.Tensor:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def apply_temperature(logits, temperature) -> torch.Tensor:
    """logits / T (T: a float, or one per label for multi-label); None or 1 leaves them unchanged."""
    logits = _tensor(logits).float()
    if temperature is None:
        return logits
    t = torch.as_tensor(temperature, dtype=torch.float32)
    if (t <= 0).any():
        raise ValueError(f"temperature must be positive, got {temperature}")
    return logits / t


def calibration_metrics(logits, targets, multilabel: bool = False, n_bins: int = N_BINS) -> dict:
    """{"ece", "brier", "nll"} of one split's logits (floats; NaN when nothing can be scored)."""
    logits, targets = _tensor(logits).float(), _tensor(targets).long()
    if multilabel:
        ece, brier, nll = [], [], []
        probs = torch.sigmoid(logits)
        for j in range(logits.shape[1]):
            valid = targets[:, j] != IGNORE
            if not valid.any():
                continue
            p, y, z = probs[valid, j], targets[valid, j], logits[valid, j]
            ece.append(M.binary_calibration_error(p, y, n_bins=n_bins, norm="l1").item())
            brier.append(((p - y.float()) ** 2).mean().item())
            nll.append(F.binary_cross_entropy_with_logits(z, y.float()).item())
        mean = lambda v: float(np.mean(v)) if v else math.nan  # noqa: E731
        return {"ece": mean(ece), "brier": mean(brier), "nll": mean(nll)}
    if not len(targets):
        return {"ece": math.nan, "brier": math.nan, "nll": math.nan}
    c = logits.shape[1]
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(targets, c).float()
    brier = ((probs - onehot) ** 2).sum(dim=1).mean().item() * (0.5 if c == 2 else 1.0)
    return {"ece": M.multiclass_calibration_error(probs, targets, num_classes=c, n_bins=n_bins, norm="l1").item(),
            "brier": brier, "nll": F.cross_entropy(logits, targets).item()}


def _nll_loss(logits, targets, multilabel, log_t):
    scaled = logits / log_t.exp()
    if not multilabel:
        return F.cross_entropy(scaled, targets)
    valid = (targets != IGNORE).float()
    loss = F.binary_cross_entropy_with_logits(scaled, targets.clamp(min=0).float(), reduction="none")
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def fit_temperature(val_logits, val_targets, multilabel: bool = False, max_iter: int = 200):
    """The temperature minimising validation NLL: a float (single-label) or a list, one per label."""
    logits, targets = _tensor(val_logits).float(), _tensor(val_targets).long()
    shape = (logits.shape[1],) if multilabel else ()
    if not len(logits):
        return [1.0] * shape[0] if multilabel else 1.0
    log_t = torch.zeros(shape, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = _nll_loss(logits, targets, multilabel, log_t)
        loss.backward()
        return loss

    opt.step(closure)
    t = log_t.detach().clamp(*_LOG_T_RANGE).exp()
    if not torch.isfinite(t).all():
        t = torch.ones(shape)
    if not multilabel:
        return float(t)
    for j in range(logits.shape[1]):   # all-0 / all-1 labels: no finite optimum, leave them alone
        y = targets[:, j][targets[:, j] != IGNORE]
        if len(y) == 0 or y.min() == y.max():
            t[j] = 1.0
    return [float(v) for v in t]


def calibration_report(val_logits, val_targets, splits: dict, multilabel: bool = False) -> dict:
    """Fit T on validation and score each split before and after it.

    splits: {name: (logits, targets)}, e.g. {"val": ..., "test": ...}. Returns {"temperature",
    "n_bins", "fitted_on": "val", name: {"before": {...}, "after": {...}}}.
    """
    t = fit_temperature(val_logits, val_targets, multilabel)
    out = {"temperature": t, "n_bins": N_BINS, "fitted_on": "val"}
    for name, (logits, targets) in splits.items():
        out[name] = {"before": calibration_metrics(logits, targets, multilabel),
                     "after": calibration_metrics(apply_temperature(logits, t), targets, multilabel)}
    return out


def _confidences(logits, targets, multilabel):
    """(confidence, correct) pairs the diagram bins: max-prob vs argmax right, or every valid label."""
    logits, targets = _tensor(logits).float(), _tensor(targets).long()
    if multilabel:
        valid = targets != IGNORE
        return torch.sigmoid(logits)[valid].numpy(), targets[valid].numpy().astype(float)
    probs = torch.softmax(logits, dim=1)
    conf, pred = probs.max(dim=1)
    return conf.numpy(), (pred == targets).numpy().astype(float)


def reliability_bins(logits, targets, multilabel: bool = False, n_bins: int = N_BINS) -> dict:
    """Per equal-width bin: mean confidence, accuracy (observed frequency) and count (None when empty)."""
    conf, correct = _confidences(logits, targets, multilabel)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)   # bins (lo, hi]
    counts = np.bincount(which, minlength=n_bins)
    sums_c = np.bincount(which, weights=conf, minlength=n_bins)
    sums_a = np.bincount(which, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mc, acc = sums_c / counts, sums_a / counts
    return {"edges": edges.tolist(), "count": counts.tolist(),
            "confidence": [None if k == 0 else float(v) for k, v in zip(counts, mc)],
            "accuracy": [None if k == 0 else float(v) for k, v in zip(counts, acc)]}


def reliability_diagram(logits, targets, path, multilabel: bool = False, temperature=None,
                        title: str = "Reliability") -> Path:
    """Write a reliability-diagram PNG (before and, given a temperature, after scaling) to `path`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [("raw", logits)]
    if temperature is not None:
        curves.append((f"T-scaled (T={_t_text(temperature)})", apply_temperature(logits, temperature)))
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfect")
    for label, z in curves:
        bins = reliability_bins(z, targets, multilabel)
        pts = [(c, a) for c, a in zip(bins["confidence"], bins["accuracy"]) if c is not None]
        ece = calibration_metrics(z, targets, multilabel)["ece"]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"{label}: ECE {ece:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1), title=title,
           xlabel="predicted probability" if multilabel else "confidence (max probability)",
           ylabel="observed frequency" if multilabel else "accuracy")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _t_text(t) -> str:
    return f"{t:.2f}" if isinstance(t, (int, float)) else f"{min(t):.2f}..{max(t):.2f}"
