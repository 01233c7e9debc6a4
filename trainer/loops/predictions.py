"""Per-image predictions of a seed: ``seed_<k>/predictions.csv``, one row per validation and test image.

Anyone can then check a result's metrics, or run their own analysis (other subgroups, other thresholds),
without running inference again. Columns:

    split            val | test
    image_id         the image's path relative to the dataset folder (as in splits.json)
    group            the patient / lesion id that splits keep together (empty where the dataset has none)
    label            single-label: the true class name; label_index: its column index
    y_<class>        multi-label: the true 0/1 label (empty: unknown, left out of the metrics)
    p_<class>        the model's probability (softmax; sigmoid for multi-label) from which results.json's
                     metrics are computed
    calibrated_p_<class>   the same after temperature scaling (temperature fitted on validation; as the
                     Predictor and the app report them)
    <attribute>      each subgroup attribute the dataset carries (sex, age, ...)

The selected (best-validation) checkpoint's predictions, in split order. Written atomically.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .calibration import apply_temperature
from .metrics import IGNORE

PREDICTIONS_NAME = "predictions.csv"
FIXED_COLUMNS = ("split", "image_id", "group", "label", "label_index")


def _probs(logits: torch.Tensor, multilabel: bool) -> np.ndarray:
    logits = logits.float()
    return (torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)).numpy()


def predictions_frame(outputs: dict, index, splits: dict, temperature=None) -> pd.DataFrame:
    """``outputs``: {split name: (logits, targets)} in the order of ``splits[name]``."""
    rel = index.relpaths()
    frames = []
    for name, (logits, targets) in outputs.items():
        rows = np.asarray(splits[name], dtype=int)
        if len(rows) != len(logits):
            raise ValueError(f"{name}: {len(logits)} predictions for {len(rows)} images")
        df = pd.DataFrame({"split": name, "image_id": [rel[i] for i in rows],
                           "group": [index.groups[i] for i in rows] if index.groups is not None else ""})
        t = targets.cpu().numpy()
        if index.multilabel:
            for j, c in enumerate(index.class_names):
                df[f"y_{c}"] = pd.array(np.where(t[:, j] == IGNORE, None, t[:, j]).tolist(), dtype="Int64")
        else:
            df["label"] = [index.class_names[int(k)] for k in t]
            df["label_index"] = t.astype(int)
        raw = _probs(logits.cpu(), index.multilabel)
        cal = _probs(apply_temperature(logits.cpu().float(), temperature), index.multilabel) \
            if temperature is not None else raw
        for j, c in enumerate(index.class_names):
            df[f"p_{c}"] = raw[:, j].astype(np.float64)
        for j, c in enumerate(index.class_names):
            df[f"calibrated_p_{c}"] = cal[:, j].astype(np.float64)
        for attr, values in (index.subgroups or {}).items():
            column = attr if attr not in df.columns else f"subgroup_{attr}"
            df[column] = np.asarray(values)[rows]
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(FIXED_COLUMNS))


def write_predictions(path: str | os.PathLike, outputs: dict, index, splits: dict, temperature=None) -> Path:
    """Write :func:`predictions_frame` as CSV to ``path`` through a temporary file (never half a file).
    Probabilities keep every digit of their float32 values, so metrics recomputed from the file equal
    results.json's exactly."""
    path = Path(path)
    df = predictions_frame(outputs, index, splits, temperature)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        df.to_csv(tmp, index=False, float_format="%.9g")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
