"""Bootstrap intervals (trainer.loops.bootstrap): containment, narrowing with n, whole-group resampling,
and the headline metric equal to scikit-learn's."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

from trainer.loops.bootstrap import group_layout, headline_interval, headline_metric, resample_indices


def noisy_classifier(n: int, seed: int = 0, classes: int = 3, acc: float = 0.7):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    pred = np.where(rng.random(n) < acc, y, rng.integers(0, classes, n))
    logits = 4.0 * np.eye(classes)[pred] + rng.normal(0, 0.1, (n, classes))
    return torch.tensor(logits, dtype=torch.float32), torch.tensor(y)


def test_interval_contains_the_estimate_and_narrows_as_n_grows():
    widths = []
    for n in (100, 2500):
        logits, y = noisy_classifier(n)
        ci = headline_interval(logits, y, n_resamples=400, seed=0)
        assert ci["low"] <= ci["estimate"] <= ci["high"] and ci["n_valid"] == 400
        assert ci["estimate"] == pytest.approx(f1_score(y, logits.argmax(1), average="macro"))
        widths.append(ci["high"] - ci["low"])
    assert widths[1] < 0.4 * widths[0]  # ~ 1 / sqrt(25) = 0.2 of the width
    again = headline_interval(*noisy_classifier(100), n_resamples=400, seed=0)
    assert again["low"] == pytest.approx(headline_interval(*noisy_classifier(100), n_resamples=400, seed=0)["low"])


def test_groups_are_resampled_whole():
    groups = np.repeat([f"p{i}" for i in range(30)], [1 + i % 4 for i in range(30)])
    layout = group_layout(groups)
    rng = np.random.default_rng(0)
    for _ in range(20):
        rows = resample_indices(len(groups), rng, layout)
        drawn = groups[rows]
        for g in set(drawn.tolist()):  # a drawn patient comes with all of its images, k times over
            k, size = int((drawn == g).sum()), int((groups == g).sum())
            assert k % size == 0
            assert sorted(set(rows[drawn == g].tolist())) == np.flatnonzero(groups == g).tolist()
    logits, y = noisy_classifier(len(groups), seed=2)
    ci = headline_interval(logits, y, groups=groups, n_resamples=200)
    assert ci["resampled_by"] == "group" and ci["low"] <= ci["estimate"] <= ci["high"]


def test_multilabel_headline_is_macro_auroc_over_defined_labels():
    rng = np.random.default_rng(3)
    y = (rng.random((300, 4)) < 0.3).astype(np.float32)
    y[:, 3] = 0  # no positives: undefined, left out (not scored 0)
    y[:5, 1] = -1  # ignored targets
    logits = torch.tensor(y * 1.5 + rng.normal(0, 1, y.shape), dtype=torch.float32)
    metric = headline_metric(logits, torch.tensor(y), multilabel=True)
    expected = np.mean([roc_auc_score(y[y[:, j] >= 0, j], logits.numpy()[y[:, j] >= 0, j]) for j in range(3)])
    assert metric(np.arange(300)) == pytest.approx(expected, rel=1e-4)  # float32 sigmoid: rare ties
