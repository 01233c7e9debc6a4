"""Calibration metrics and temperature scaling (trainer.loops.calibration) against scikit-learn and the
written-out ECE definition (Guo et al. 2017, eq. 3)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss, log_loss

from trainer.loops.calibration import (apply_temperature, calibration_metrics, calibration_report,
                                       fit_temperature, reliability_bins, reliability_diagram)


def ece_definition(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """sum_b |B_b|/n * |acc(B_b) - conf(B_b)| over equal-width bins (lo, hi]."""
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return total


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def overconfident(n, c=4, scale=6.0, seed=0):
    """A ~65%-accurate classifier whose logits are multiplied by `scale` (far too sure of itself)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    z = rng.normal(0, 1, (n, c)) + 1.2 * np.eye(c)[y]
    return torch.tensor(scale * z, dtype=torch.float32), torch.tensor(y)


def test_single_label_metrics_equal_scikit_learn_and_the_definition():
    logits, y = overconfident(500, scale=1.5)
    p = softmax(logits.numpy())
    m = calibration_metrics(logits, y)
    assert m["nll"] == pytest.approx(log_loss(y.numpy(), p, labels=range(4)), rel=1e-5)
    assert m["brier"] == pytest.approx(brier_score_loss(y.numpy(), p, labels=range(4)), rel=1e-5)
    assert m["ece"] == pytest.approx(ece_definition(p.max(1), (p.argmax(1) == y.numpy()).astype(float)), abs=1e-5)
    binary_logits, by = overconfident(300, c=2, scale=2.0, seed=1)
    pb = softmax(binary_logits.numpy())
    mb = calibration_metrics(binary_logits, by)                 # 2 classes: the binary Brier score
    assert mb["brier"] == pytest.approx(brier_score_loss(by.numpy(), pb[:, 1]), rel=1e-5)


def test_multilabel_metrics_average_per_label_and_skip_ignored_targets():
    rng = np.random.default_rng(3)
    t = (rng.random((400, 3)) < 0.4).astype(np.float32)
    z = 3 * (t - 0.5) + rng.normal(0, 2, t.shape)
    t[:50, 2] = -1
    m = calibration_metrics(torch.tensor(z), torch.tensor(t), multilabel=True)
    p = 1 / (1 + np.exp(-z))
    keep = [t[:, j] != -1 for j in range(3)]
    assert m["brier"] == pytest.approx(np.mean([brier_score_loss(t[k, j], p[k, j]) for j, k in enumerate(keep)]),
                                       rel=1e-5)
    assert m["nll"] == pytest.approx(np.mean([log_loss(t[k, j], p[k, j]) for j, k in enumerate(keep)]), rel=1e-4)
    assert m["ece"] == pytest.approx(np.mean([ece_definition(p[k, j], t[k, j]) for j, k in enumerate(keep)]),
                                     abs=1e-5)


def test_temperature_scaling_fixes_an_overconfident_model_and_keeps_the_argmax():
    val_logits, val_y = overconfident(600, seed=4)
    test_logits, test_y = overconfident(600, seed=5)
    t = fit_temperature(val_logits, val_y)
    assert isinstance(t, float) and t > 2                      # the logits were scaled by 6
    before, after = calibration_metrics(val_logits, val_y), calibration_metrics(apply_temperature(val_logits, t),
                                                                                 val_y)
    assert after["nll"] < 0.7 * before["nll"] and after["ece"] < 0.5 * before["ece"]
    # the fitted T is (close to) the NLL minimum: nudging it either way is no better
    for other in (0.8 * t, 1.25 * t):
        assert calibration_metrics(apply_temperature(val_logits, other), val_y)["nll"] >= after["nll"] - 1e-6
    assert torch.equal(apply_temperature(test_logits, t).argmax(1), test_logits.argmax(1))
    report = calibration_report(val_logits, val_y, {"val": (val_logits, val_y), "test": (test_logits, test_y)})
    assert report["temperature"] == pytest.approx(t) and report["fitted_on"] == "val" and report["n_bins"] == 15
    assert report["test"]["after"]["ece"] < report["test"]["before"]["ece"]
    assert report["test"]["after"]["nll"] < report["test"]["before"]["nll"]


def test_one_temperature_per_label():
    rng = np.random.default_rng(6)
    t = (rng.random((800, 3)) < 0.5).astype(np.float32)
    z = 1.5 * (t - 0.5) + rng.normal(0, 1, t.shape)
    z[:, 0] *= 5.0                      # over-confident label -> T > 1
    z[:, 1] *= 0.2                      # under-confident label -> T < 1
    t[:, 2] = 0                         # no positives: no finite optimum, T stays 1
    temps = fit_temperature(torch.tensor(z), torch.tensor(t), multilabel=True)
    assert len(temps) == 3 and temps[0] > 2 and temps[1] < 0.5 and temps[2] == 1.0
    scaled = apply_temperature(torch.tensor(z), temps)
    assert torch.equal(scaled > 0, torch.tensor(z) > 0)                  # the 0.5 decisions are unchanged
    before = calibration_metrics(z[:, :2], t[:, :2], multilabel=True)
    after = calibration_metrics(scaled[:, :2], t[:, :2], multilabel=True)
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"]
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(z, [1.0, 0.0, 1.0])


def test_reliability_diagram_png(tmp_path):
    logits, y = overconfident(300, seed=7)
    bins = reliability_bins(logits, y)
    assert sum(bins["count"]) == 300 and len(bins["confidence"]) == 15
    filled = [(c, a) for c, a in zip(bins["confidence"], bins["accuracy"]) if c is not None]
    assert all(0 <= a <= 1 for _, a in filled) and filled[-1][0] > 0.9   # the over-confident mass near 1
    path = reliability_diagram(logits, y, tmp_path / "run" / "reliability_test.png", temperature=3.0)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
