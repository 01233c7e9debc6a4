"""Subgroup metrics (trainer.loops.fairness) against scikit-learn, fairlearn and hand counts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from trainer.loops.fairness import fairness_differences, group_scores, subgroup_metrics

CLASSES = ["a", "b", "c"]


def planted_bias(n=900, noisy_group="F", flip=0.45, seed=0):
    """A good 3-class model whose labels are made noisier in one group (the planted bias)."""
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 3, n)
    logits = 3.0 * np.eye(3)[clean] + rng.normal(0, 1.0, (n, 3))
    sex = rng.choice(["F", "M"], n).astype("<U8")
    sex[:40] = "unknown"
    sex[40:50] = "X"                                            # a group of 10: too small to score
    age = rng.choice(["<40", "40-59", "60-79"], n)
    labels = clean.copy()
    noisy = (sex == noisy_group) & (rng.random(n) < flip)
    labels[noisy] = rng.integers(0, 3, int(noisy.sum()))
    return torch.tensor(logits, dtype=torch.float32), torch.tensor(labels), {"sex": sex, "age": age}


def test_planted_bias_is_found_and_small_groups_are_not_scored():
    logits, labels, groups = planted_bias()
    report = subgroup_metrics(logits, labels, groups, CLASSES)
    sex = report["attributes"]["sex"]
    assert sex["worst_group"] == "F" and sex["best_group"] == "M"
    assert sex["gap"] > 0.2                                      # clearly above 0
    assert sex["groups"]["X"] == {"n": 10, "scored": False, "score": None, "accuracy": None}
    assert sex["too_small"] == ["X"]
    assert sex["groups"]["unknown"]["scored"] and sex["groups"]["unknown"]["n"] == 40
    assert sex["worst_group"] != "unknown"
    assert sex["equalized_odds_difference"] > 0.2
    # age carries no planted bias: a much smaller gap than sex
    assert report["attributes"]["age"]["gap"] < sex["gap"] / 2
    assert report["worst_group_score"] == pytest.approx(sex["worst_score"])
    assert report["headline"] == "f1_macro" and report["min_group_size"] == 30
    stricter = subgroup_metrics(logits, labels, groups, CLASSES, min_size=45)   # unknown (40) now too small
    assert stricter["attributes"]["sex"]["too_small"] == ["X", "unknown"]


def test_group_scores_equal_scikit_learn():
    logits, labels, groups = planted_bias(seed=1)
    pred = logits.argmax(1).numpy()
    y = labels.numpy()
    scores = group_scores(logits, labels, groups["age"], CLASSES)
    for value, entry in scores.items():
        rows = groups["age"] == value
        present = sorted(set(y[rows]))
        assert entry["n"] == rows.sum()
        assert entry["score"] == pytest.approx(f1_score(y[rows], pred[rows], average="macro", labels=present))
        assert entry["accuracy"] == pytest.approx(accuracy_score(y[rows], pred[rows]))


def test_multilabel_groups_score_auroc():
    rng = np.random.default_rng(2)
    n = 400
    t = (rng.random((n, 4)) < 0.3).astype(np.float32)
    logits = 2 * (t - 0.5) + rng.normal(0, 1.5, (n, 4))
    site = np.where(np.arange(n) < 200, "s1", "s2")
    logits[site == "s2"] = rng.normal(0, 1.5, (200, 4))          # no signal at site s2
    t[0, 3] = -1                                                  # an ignored uncertain label
    report = subgroup_metrics(torch.tensor(logits), torch.tensor(t), {"site": site}, ["w", "x", "y", "z"],
                              multilabel=True)
    site_report = report["attributes"]["site"]
    assert report["headline"] == "auroc" and site_report["worst_group"] == "s2"
    rows = site == "s2"
    expected = np.mean([roc_auc_score(t[rows, j], logits[rows, j]) for j in range(4)])
    assert site_report["groups"]["s2"]["score"] == pytest.approx(expected, abs=1e-5)
    # per-label fairness differences use p > 0.5 and leave the -1 target out
    for j, name in enumerate("wxyz"):
        keep = t[:, j] != -1
        pred = (logits[keep, j] > 0).astype(int)
        got = site_report["per_class"][name]
        assert got["demographic_parity_difference"] == pytest.approx(
            demographic_parity_difference(t[keep, j], pred, sensitive_features=site[keep]))
        assert got["equalized_odds_difference"] == pytest.approx(
            equalized_odds_difference(t[keep, j], pred, sensitive_features=site[keep]))


def test_fairness_differences_hand_counted_binary():
    # group a: 4 positives (3 predicted +), 4 negatives (1 predicted +); group b: 4 pos (1 +), 4 neg (0 +)
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0] * 2)
    p = np.array([1, 1, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    g = np.array(["a"] * 8 + ["b"] * 8)
    logits = torch.tensor(np.stack([1 - p, p], axis=1), dtype=torch.float32)
    out = fairness_differences(logits, torch.tensor(y), g, ["neg", "pos"])
    # TPR 3/4 vs 1/4 -> 0.5; FPR 1/4 vs 0 -> 0.25; equalized odds = max = 0.5
    # selection rate 4/8 vs 1/8 -> demographic parity 0.375
    assert out["per_class"]["pos"] == {"equalized_odds_difference": 0.5, "demographic_parity_difference": 0.375}
    assert out["equalized_odds_difference"] == 0.5 and out["demographic_parity_difference"] == 0.375
    assert out["equalized_odds_difference"] == equalized_odds_difference(y, p, sensitive_features=g)
    assert out["demographic_parity_difference"] == demographic_parity_difference(y, p, sensitive_features=g)


def test_multiclass_differences_are_the_largest_one_vs_rest_fairlearn_value():
    logits, labels, groups = planted_bias(seed=3)
    pred, y = logits.argmax(1).numpy(), labels.numpy()
    keep = np.isin(groups["sex"], ["F", "M"])
    out = fairness_differences(logits, labels, groups["sex"], CLASSES, keep_groups=["F", "M"])
    eo = [equalized_odds_difference((y[keep] == k).astype(int), (pred[keep] == k).astype(int),
                                    sensitive_features=groups["sex"][keep]) for k in range(3)]
    dp = [demographic_parity_difference((y[keep] == k).astype(int), (pred[keep] == k).astype(int),
                                        sensitive_features=groups["sex"][keep]) for k in range(3)]
    assert out["equalized_odds_difference"] == pytest.approx(max(eo))
    assert out["demographic_parity_difference"] == pytest.approx(max(dp))
    assert [out["per_class"][c]["equalized_odds_difference"] for c in CLASSES] == pytest.approx(eo)


def test_equalized_odds_skips_groups_without_positives():
    # group b has no positive: its true-positive rate is undefined (fairlearn would count it as 0)
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0])
    p = np.array([1, 0, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0])
    g = np.array(list("aaaabbbbcccc"))
    logits = torch.tensor(np.stack([1 - p, p], axis=1), dtype=torch.float32)
    out = fairness_differences(logits, torch.tensor(y), g, ["neg", "pos"])
    ac = np.isin(g, ["a", "c"])
    assert out["equalized_odds_difference"] == equalized_odds_difference(y[ac], p[ac], sensitive_features=g[ac])
    assert out["demographic_parity_difference"] == demographic_parity_difference(y, p, sensitive_features=g)
    one = fairness_differences(logits[:8], torch.tensor(y[:8]), g[:8], ["neg", "pos"])
    assert one["equalized_odds_difference"] is None                     # only one group has both
    assert subgroup_metrics(logits, torch.tensor(y), {"g": g}, ["neg", "pos"])["worst_group_score"] is None
