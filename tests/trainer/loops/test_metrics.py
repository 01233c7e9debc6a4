"""Classification metrics against scikit-learn, with classes missing from the evaluated split."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, f1_score, hamming_loss,
                             roc_auc_score)

from trainer.loops.metrics import aggregate, classification_metrics, headline, undefined_notes


def _multiclass_case(seed: int = 0, n: int = 120, c: int = 5, absent=(3,)):
    rng = np.random.default_rng(seed)
    y = rng.choice([k for k in range(c) if k not in absent], size=n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]
    logits[:10, absent[0]] += 5.0  # the absent class is still predicted sometimes
    return torch.tensor(logits, dtype=torch.float32), torch.tensor(y)


def test_single_label_with_a_missing_class_equals_sklearn():
    logits, y = _multiclass_case()
    names = list("abcde")
    m = classification_metrics(logits, y, names)
    probs = torch.softmax(logits, 1).numpy()
    pred, yt = probs.argmax(1), y.numpy()
    present = sorted(set(yt.tolist()))
    assert 3 in pred and 3 not in present  # the case scikit-learn and torchmetrics disagree on
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        ref_bacc = balanced_accuracy_score(yt, pred)
    assert m["balanced_accuracy"] == pytest.approx(ref_bacc, abs=1e-6)
    assert m["f1_macro"] == pytest.approx(f1_score(yt, pred, average="macro", labels=present), abs=1e-6)
    assert m["accuracy"] == pytest.approx(accuracy_score(yt, pred), abs=1e-6)
    onehot = np.eye(5)[yt]
    ref_auroc = roc_auc_score(onehot[:, present], probs[:, present], average="macro")
    assert m["auroc"] == pytest.approx(ref_auroc, abs=1e-6)
    assert m["undefined_classes"] == {"auroc": ["d"], "f1_macro": ["d"]}
    assert m["auroc_per_class"]["d"] is None and m["per_class_f1"]["d"] is None
    for k in present:
        assert m["auroc_per_class"][names[k]] == pytest.approx(roc_auc_score(yt == k, probs[:, k]), abs=1e-6)
    assert m["per_class_f1"]["a"] == pytest.approx(f1_score(yt, pred, labels=[0], average=None)[0], abs=1e-6)
    assert headline(m) == m["f1_macro"]
    # sklearn's own default (a predicted-but-absent class counted as F1 0) is lower: the bug this avoids
    assert m["f1_macro"] > f1_score(yt, pred, average="macro") + 1e-3


def test_single_label_all_classes_present_equals_sklearn_ovr():
    logits, y = _multiclass_case(seed=1, c=4, absent=(3,))
    y = torch.cat([y, torch.tensor([3, 3, 3])])
    logits = torch.cat([logits, torch.randn(3, 4)])
    m = classification_metrics(logits, y, list("abcd"))
    probs = torch.softmax(logits.double(), 1).numpy()
    probs /= probs.sum(1, keepdims=True)
    assert m["auroc"] == pytest.approx(roc_auc_score(y.numpy(), probs, multi_class="ovr"), abs=1e-6)
    assert m["f1_macro"] == pytest.approx(f1_score(y.numpy(), probs.argmax(1), average="macro"), abs=1e-6)
    assert m["undefined_classes"] == {"auroc": [], "f1_macro": []}
    assert len(m["confusion_matrix"]) == 4


def test_binary_auroc_is_the_positive_class_auroc():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    logits = torch.tensor(rng.normal(size=(200, 2)) + np.eye(2)[y], dtype=torch.float32)
    m = classification_metrics(logits, torch.tensor(y), ["normal", "pneumonia"])
    p1 = torch.softmax(logits, 1)[:, 1].numpy()
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p1), abs=1e-6)


def _multilabel_case(seed: int = 0, n: int = 150, c: int = 6):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.3).astype(np.int64)
    y[:, 2] = 0           # a label without positives (NIH's rare labels on a small test split)
    y[:, 4] = 1           # a label without negatives
    logits = rng.normal(size=(n, c)) + 1.2 * y
    return torch.tensor(logits, dtype=torch.float32), torch.tensor(y)


def test_multilabel_with_an_all_negative_label_equals_sklearn_over_defined_labels():
    logits, y = _multilabel_case()
    names = [f"l{j}" for j in range(6)]
    m = classification_metrics(logits, y, names, multilabel=True)
    probs, yt = torch.sigmoid(logits).numpy(), y.numpy()
    with pytest.warns(UserWarning, match="Only one class"):  # scikit-learn: NaN for those labels
        assert math.isnan(roc_auc_score(yt, probs, average="macro"))
    defined = [0, 1, 3, 5]
    assert m["auroc"] == pytest.approx(roc_auc_score(yt[:, defined], probs[:, defined], average="macro"), abs=1e-6)
    pred = (probs >= 0.5).astype(int)
    with_pos = [0, 1, 3, 4, 5]
    ref_f1 = f1_score(yt, pred, average="macro", labels=with_pos, zero_division=0)
    assert m["f1_macro"] == pytest.approx(ref_f1, abs=1e-6)
    assert m["accuracy"] == pytest.approx(1 - hamming_loss(yt, pred), abs=1e-6)
    assert m["undefined_classes"] == {"auroc": ["l2", "l4"], "f1_macro": ["l2"]}
    assert m["auroc_per_class"]["l2"] is None and m["auroc_per_class"]["l4"] is None
    assert m["auroc_per_class"]["l0"] == pytest.approx(roc_auc_score(yt[:, 0], probs[:, 0]), abs=1e-6)
    assert headline(m) == m["auroc"]
    notes = undefined_notes(m, "test (seed 0)")
    assert len(notes) == 2 and "l2" in notes[0] and "l2, l4" in notes[1] and "not scored 0" in notes[1]


def test_multilabel_ignored_targets_are_left_out_per_label():
    logits, y = _multilabel_case(seed=3)
    y = y.clone()
    y[:40, 0] = -1
    m = classification_metrics(logits, y, [f"l{j}" for j in range(6)], multilabel=True)
    probs = torch.sigmoid(logits).numpy()
    assert m["auroc_per_class"]["l0"] == pytest.approx(roc_auc_score(y[40:, 0].numpy(), probs[40:, 0]), abs=1e-6)


def test_nothing_defined_gives_nan_not_zero():
    logits = torch.randn(5, 3)
    m = classification_metrics(logits, torch.zeros(5, dtype=torch.long), list("abc"))
    assert math.isnan(m["auroc"]) and m["undefined_classes"]["auroc"] == ["a", "b", "c"]
    assert m["undefined_classes"]["f1_macro"] == ["b", "c"]


def test_aggregate_skips_non_scalars():
    logits, y = _multiclass_case()
    a = classification_metrics(logits, y, list("abcde"))
    b = classification_metrics(logits * 0.5, y, list("abcde"))
    agg = aggregate([a, b])
    assert set(agg) == {"f1_macro", "accuracy", "balanced_accuracy", "auroc"}
    assert agg["auroc"]["values"] == [a["auroc"], b["auroc"]]


def test_summary_prints_each_metric_once_with_f1_for_multilabel():
    from trainer.loops.classify import format_summary

    logits, y = _multilabel_case()
    m = classification_metrics(logits, y, [f"l{j}" for j in range(6)], multilabel=True)
    results = {"metrics": {"test": aggregate([m])}, "headline": "auroc", "method": "lora",
               "dataset": "chestxray14", "backbone": "vit", "seeds": [0], "trainable_params": 1,
               "total_params": 10}
    text = format_summary(results)
    assert text.count("test auroc") == 1 and text.count("test f1_macro") == 1
