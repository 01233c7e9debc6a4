"""The one place results are read and summarised: the app's leaderboard and the benchmark report.

Two sources, one table (a ``pandas.DataFrame`` with :data:`COLUMNS`):

- :func:`reference_rows` the numbers Dutt et al. 2024 report (``trainer/reference/dutt2024_reported.csv``);
- :func:`local_rows` every ``results.json`` the trainer wrote below a folder.

In the table, ``mean``/``std`` are in the metric's own unit: F1 (and AUROC, accuracy) as a fraction
0..1, FID in FID points. ``std`` is the paper's reported +- (converted from percentage points) for
reference rows, the sample standard deviation over seeds for local rows.

    df = all_rows("runs")
    leaderboard(df)        # one display table
    summary(df)            # average F1 and average rank per method and backbone (the paper's summary rows)

The figures of these rows are :mod:`trainer.study.plots`'s.
"""
from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..run_dir import RESULTS_NAME, ResultsError, RunResults

log = logging.getLogger(__name__)

REFERENCE_CSV = Path(__file__).resolve().parents[1] / "reference" / "dutt2024_reported.csv"
REFERENCE_SOURCE = "Dutt et al. 2024 (reported)"
MEDPEFT_CSV = REFERENCE_CSV.with_name("medpeft2024_reported.csv")
MEDPEFT_SOURCE = "MED-PEFT 2024 (reported)"
LOCAL_SOURCE = "local"

COLUMNS = ["task", "backbone", "backbone_full", "dataset", "method", "metric", "mean", "std", "n_seeds",
           "trainable_params", "trainable_params_text", "total_params", "fraction", "n_train", "source",
           "table", "path", "note", "worst_group", "worst_group_name", "ece", "ece_calibrated", "subgroups"]
LOWER_IS_BETTER = {"fid"}
METRIC_LABELS = {"f1_macro": "F1 (%)", "fid": "FID", "auroc": "AUROC (%)", "accuracy": "accuracy (%)"}
PERCENT_METRICS = {"f1_macro", "auroc", "accuracy", "balanced_accuracy"}
SKIP_DIRS = {".git", ".venv", "__pycache__", "node_modules", ".cache"}


# ---------------------------------------------------------------------------------------- reading
def backbone_key(name: str) -> str:
    """A comparable backbone name: ``resnet50.a1_in1k`` -> ``resnet50``,
    ``vit_base_patch16_224.augreg2_in21k_ft_in1k`` -> ``vit_base`` (the paper's names)."""
    arch = str(name).split(".")[0].split("/")[-1]
    m = re.match(r"^vit_(tiny|small|base|large|huge|giant|gigantic)(_|$)", arch)
    return f"vit_{m.group(1)}" if m else arch


def parse_param_count(text: Any) -> float:
    """``"23.5M"`` -> 23.5e6, ``"3.8-7.2K"`` -> 5.5e3 (the middle of a reported range), blank -> NaN."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return math.nan
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().replace(",", "")
    if not s:
        return math.nan
    m = re.fullmatch(r"([\d.]+)(?:\s*-\s*([\d.]+))?\s*([KkMmBbGg]?)", s)
    if not m:
        return math.nan
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}[m.group(3).lower()]
    lo = float(m.group(1))
    hi = float(m.group(2)) if m.group(2) else lo
    return (lo + hi) / 2 * scale


def format_params(n: Any) -> str:
    """23_500_000 -> ``23.5M``; NaN/None -> ``""``."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return ""
    n = float(n)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def _empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in COLUMNS})


def _frame(rows: list[dict]) -> pd.DataFrame:
    if not rows:
        return _empty()
    df = pd.DataFrame(rows)
    for c in COLUMNS:
        if c not in df:
            df[c] = None
    df = df[COLUMNS]
    for c in ("mean", "std", "trainable_params", "total_params", "fraction", "n_train", "n_seeds", "worst_group",
              "ece", "ece_calibrated"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    return df


def reference_rows(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The results Dutt et al. 2024 report (Tables 2-4), as table rows.

    ``spread`` (the reported +-) is in percentage points for F1 and becomes a fraction here;
    ``fraction`` is n_train relative to the largest n_train of the same table and dataset.
    """
    path = Path(path) if path else REFERENCE_CSV
    ref = pd.read_csv(path, dtype={"trainable_params_reported": str}, keep_default_na=False,
                      na_values={"mean": [""], "spread": [""], "n_train": [""]})
    rows = []
    largest = ref.groupby(["table", "dataset"])["n_train"].transform("max")
    for (_, r), biggest in zip(ref.iterrows(), largest):
        metric = str(r["metric"])
        spread = float(r["spread"]) if str(r["spread"]) != "" else math.nan
        if metric in PERCENT_METRICS:
            spread = spread / 100.0
        params_text = str(r["trainable_params_reported"] or "").strip()
        rows.append({
            "task": r["task"], "backbone": backbone_key(r["backbone"]), "backbone_full": r["backbone"],
            "dataset": r["dataset"], "method": r["method"], "metric": metric, "mean": float(r["mean"]),
            "std": spread, "n_seeds": math.nan, "trainable_params": parse_param_count(params_text),
            "trainable_params_text": params_text, "total_params": math.nan,
            "fraction": round(float(r["n_train"]) / float(biggest), 3) if biggest else 1.0,
            "n_train": float(r["n_train"]), "source": REFERENCE_SOURCE, "table": f"Table {r['table']}",
            "path": str(path.name),
        })
    return _frame(rows)


def _metric_from_run(metrics: dict, task: str) -> tuple[str, float, float, int] | None:
    """(metric, mean, std, n values) of a run's headline for the leaderboard: F1 macro for
    classification (also multi-label), FID for generation."""
    for key in (("fid",) if task == "generation" else ("f1_macro",)):
        m = metrics.get(key)
        if isinstance(m, dict) and isinstance(m.get("mean"), (int, float)):
            std = m.get("std", 0.0)
            std = float(std) if isinstance(std, (int, float)) else math.nan
            return key, float(m["mean"]), std, len(m.get("values") or []) or 1
        if isinstance(m, (int, float)) and not isinstance(m, bool):
            return key, float(m), math.nan, 1
    return None


def cached_features_note(data: dict) -> str:
    """Linear probing on cached eval-transform features (the trainer's fast default) sees no
    augmentation, unlike every other method: say so wherever its score is shown."""
    cfg = data.get("config") or {}
    if data.get("method") == "linear_probe" and cfg.get("cache_features", True):
        return CACHED_FEATURES_NOTE
    return ""


def read_run(path: str | os.PathLike, root: str | os.PathLike | None = None) -> dict | None:
    """One ``results.json`` as a table row; ``None`` (with a logged warning) if it is not a MedPEFT
    run or is malformed."""
    path = Path(path)
    try:
        found = RunResults.read(path)
    except ResultsError as e:
        log.warning("skipping %s", e)
        return None
    if not found.is_run:
        return None  # some other results.json: not ours, not an error
    data = found.data
    try:
        task = str(data.get("task") or "classification")
        test = (data.get("metrics") or {}).get("test") or {}
        found = _metric_from_run(test, task)
        if found is None:
            log.warning("skipping %s: no test %s in metrics", path, "fid" if task == "generation" else "f1_macro")
            return None
        metric, mean, std, n_values = found
        seeds = data.get("seeds") or []
        rel = os.path.relpath(path.parent, root) if root else str(path.parent)
        fraction = data.get("fraction", (data.get("config") or {}).get("fraction", 1.0))
        tp = data.get("trainable_params")
        return {
            "task": task, "backbone": backbone_key(data["backbone"]), "backbone_full": str(data["backbone"]),
            "dataset": str(data["dataset"]), "method": str(data["method"]), "metric": metric, "mean": mean,
            "std": std, "n_seeds": float(len(seeds) or n_values),
            "trainable_params": float(tp) if isinstance(tp, (int, float)) else math.nan,
            "trainable_params_text": format_params(tp) if isinstance(tp, (int, float)) else "",
            "total_params": data.get("total_params"),
            "fraction": float(fraction) if isinstance(fraction, (int, float)) else 1.0,
            "n_train": data.get("n_train"), "source": LOCAL_SOURCE, "table": "", "path": rel,
            "note": cached_features_note(data), **assessment_columns(data),
        }
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        log.warning("skipping %s: malformed MedPEFT results (%s: %s)", path, type(e).__name__, e)
        return None


def assessment_columns(data: dict) -> dict:
    """A run's fairness and calibration columns: the worst subgroup's test score (mean over seeds; the
    lowest over attributes) and which group it is, the test ECE raw and temperature-scaled, and
    ``subgroups`` {attribute: {group: mean test score}} for the per-attribute view."""
    fairness = ((data.get("fairness") or {}).get("test")) or {}
    out: dict[str, Any] = {"worst_group": math.nan, "worst_group_name": "", "subgroups": None}
    attrs = fairness.get("attributes") or {}
    worst = [(a["worst_score"]["mean"], f"{name}={a['worst_group']}") for name, a in attrs.items()
             if a.get("worst_score") and a.get("worst_group") is not None]
    if worst:
        out["worst_group"], out["worst_group_name"] = min(worst)
    if attrs:
        out["subgroups"] = {name: {g: (v.get("score") or {}).get("mean") for g, v in a["groups"].items()
                                   if v.get("scored")} for name, a in attrs.items()}
    cal = ((data.get("calibration") or {}).get("test")) or {}
    out["ece"] = ((cal.get("before") or {}).get("ece") or {}).get("mean", math.nan)
    out["ece_calibrated"] = ((cal.get("after") or {}).get("ece") or {}).get("mean", math.nan)
    return out


def find_results(root: str | os.PathLike) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        if RESULTS_NAME in filenames:
            found.append(Path(dirpath) / RESULTS_NAME)
    return found


def local_rows(root: str | os.PathLike | Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Every MedPEFT ``results.json`` below ``root`` (one folder or several) as table rows."""
    roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
    rows = []
    for r in roots:
        for path in find_results(r):
            row = read_run(path, r)
            if row is not None:
                rows.append(row)
    return _frame(rows)


def medpeft_rows(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """The numbers MED-PEFT (Lian et al. 2024, arXiv 2401.12215) reports that the project sources
    (``trainer/reference/medpeft2024_reported.csv``): mean AUROC per label fraction of its split lists."""
    path = Path(path) if path else MEDPEFT_CSV
    ref = pd.read_csv(path, keep_default_na=False, na_values={"mean": [""], "spread": [""]})
    rows = []
    for _, r in ref.iterrows():
        spread = float(r["spread"]) / 100.0 if str(r["spread"]) != "" else math.nan
        params = str(r["trainable_params_reported"] or "").strip()
        rows.append({
            "task": r["task"], "backbone": backbone_key(r["backbone"]), "backbone_full": r["backbone"],
            "dataset": r["dataset"], "method": r["method"], "metric": str(r["metric"]), "mean": float(r["mean"]),
            "std": spread, "n_seeds": math.nan, "trainable_params": parse_param_count(params),
            "trainable_params_text": params, "total_params": math.nan,
            "fraction": float(r["label_fraction"]) / 100.0, "n_train": math.nan, "source": MEDPEFT_SOURCE,
            "table": f"{r['foundation']} foundation", "path": str(path.name), "note": str(r["note"]),
        })
    return _frame(rows)


def all_rows(root: str | os.PathLike | Iterable | None = None, reference: bool = True) -> pd.DataFrame:
    parts = [reference_rows(), medpeft_rows()] if reference else []
    if root is not None:
        parts.append(local_rows(root))
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else _empty()


# ------------------------------------------------------------------------------------- summaries
def format_score(metric: str, mean: float, std: float) -> str:
    """``87.1 ± 1.2`` (F1, AUROC, accuracy in %) or ``45.20 ± 3.10`` (FID); blank for a missing mean."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if metric in PERCENT_METRICS:
        s = f"{100 * mean:.1f}"
        return s + (f" ± {100 * std:.1f}" if std == std and std is not None else "")
    s = f"{mean:.2f}"
    return s + (f" ± {std:.2f}" if std == std and std is not None else "")


LEADERBOARD_COLUMNS = ["task", "backbone", "dataset", "method", "metric", "mean ± std", "worst group", "ECE",
                       "trainable params", "source", "fraction", "n_train", "note"]
CACHED_FEATURES_NOTE = "head trained on cached features: no augmentation"


def leaderboard(df: pd.DataFrame) -> pd.DataFrame:
    """One display table: F1 as ``mean ± std`` in %, FID in points, best first per group."""
    if df is None or not len(df):
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    d = df.copy()
    d["_key"] = np.where(d["metric"].isin(LOWER_IS_BETTER), d["mean"], -d["mean"])
    d = d.sort_values(["task", "backbone", "dataset", "fraction", "source", "_key"],
                      ascending=[True, True, True, False, True, True], kind="stable")
    out = pd.DataFrame({
        "task": d["task"], "backbone": d["backbone"], "dataset": d["dataset"], "method": d["method"],
        "metric": [METRIC_LABELS.get(m, m) for m in d["metric"]],
        "mean ± std": [format_score(m, a, s) for m, a, s in zip(d["metric"], d["mean"], d["std"])],
        "worst group": [f"{format_score(m, w, math.nan)} ({n})" if w == w else ""
                        for m, w, n in zip(d["metric"], d["worst_group"], d["worst_group_name"])],
        "ECE": [f"{e:.3f} → {c:.3f}" if e == e and c == c else (f"{e:.3f}" if e == e else "")
                for e, c in zip(d["ece"], d["ece_calibrated"])],
        "trainable params": [t or format_params(p) for t, p in zip(d["trainable_params_text"].fillna(""),
                                                                    d["trainable_params"])],
        "source": d["source"],
        "fraction": [f"{f:g}" if f == f else "" for f in d["fraction"]],
        "n_train": [f"{int(n)}" if n == n else "" for n in d["n_train"]],
        "note": d["note"].fillna(""),
    })
    return out.reset_index(drop=True)


GROUP = ["source", "task", "backbone", "dataset", "fraction"]


def ranks(df: pd.DataFrame) -> pd.DataFrame:
    """Per row, the method's rank within its (source, task, backbone, dataset, fraction) group:
    1 = best (highest F1, lowest FID); ties share the average rank. Repeated runs of one method
    in a group are averaged first."""
    if df is None or not len(df):
        return pd.DataFrame(columns=GROUP + ["metric", "method", "mean", "trainable_params", "rank"])
    d = df.copy()
    d["fraction"] = d["fraction"].fillna(1.0)
    d = (d.groupby(GROUP + ["metric", "method"], dropna=False, sort=False)
         .agg(mean=("mean", "mean"), trainable_params=("trainable_params", "mean")).reset_index())
    key = np.where(d["metric"].isin(LOWER_IS_BETTER), d["mean"], -d["mean"])
    d["_key"] = key
    d["rank"] = d.groupby(GROUP + ["metric"], dropna=False)["_key"].rank(method="average", ascending=True)
    return d.drop(columns="_key")


SUMMARY_COLUMNS = ["source", "task", "backbone", "fraction", "method", "metric", "average", "average rank",
                   "datasets", "trainable params"]


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's summary rows: per source, backbone, training fraction and method, the average
    score over datasets and the average rank (methods ranked within each backbone x dataset)."""
    r = ranks(df)
    if not len(r):
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    g = (r.groupby(["source", "task", "backbone", "fraction", "method", "metric"], dropna=False, sort=False)
         .agg(average=("mean", "mean"), rank=("rank", "mean"), datasets=("dataset", "nunique"),
              params=("trainable_params", "mean")).reset_index())
    g = g.sort_values(["source", "task", "backbone", "fraction", "rank"], ascending=[True, True, True, False, True],
                      kind="stable")
    out = pd.DataFrame({
        "source": g["source"], "task": g["task"], "backbone": g["backbone"],
        "fraction": [f"{f:g}" for f in g["fraction"]], "method": g["method"],
        "metric": [METRIC_LABELS.get(m, m) for m in g["metric"]],
        "average": [round(100 * a, 1) if m in PERCENT_METRICS else round(a, 2) for m, a in zip(g["metric"],
                                                                                              g["average"])],
        "average rank": g["rank"].round(2), "datasets": g["datasets"].astype(int),
        "trainable params": [format_params(p) for p in g["params"]],
    })
    return out.reset_index(drop=True)


def filter_rows(df: pd.DataFrame, **filters: Any) -> pd.DataFrame:
    """Keep rows whose column equals the value (or is in the list) for each non-empty filter."""
    for col, want in filters.items():
        if want in (None, "", [], "All", "all"):
            continue
        want = [want] if isinstance(want, str) else list(want)
        if not want:
            continue
        df = df[df[col].astype(str).isin([str(w) for w in want])]
    return df
