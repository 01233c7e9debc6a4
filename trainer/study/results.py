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
    pareto_plot(df)        # F1 vs trainable parameters
    data_volume_plot(df)   # F1 vs training fraction (None when fractions do not vary)
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

REFERENCE_CSV = Path(__file__).resolve().parents[1] / "reference" / "dutt2024_reported.csv"
REFERENCE_SOURCE = "Dutt et al. 2024 (reported)"
LOCAL_SOURCE = "local"

COLUMNS = ["task", "backbone", "backbone_full", "dataset", "method", "metric", "mean", "std", "n_seeds",
           "trainable_params", "trainable_params_text", "total_params", "fraction", "n_train", "source",
           "table", "path"]
LOWER_IS_BETTER = {"fid"}
METRIC_LABELS = {"f1_macro": "F1 (%)", "fid": "FID", "auroc": "AUROC (%)", "accuracy": "accuracy (%)"}
_PERCENT_METRICS = {"f1_macro", "auroc", "accuracy", "balanced_accuracy"}
_SKIP_DIRS = {".git", ".venv", "__pycache__", "node_modules", ".cache"}


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
    for c in ("mean", "std", "trainable_params", "total_params", "fraction", "n_train", "n_seeds"):
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
        if metric in _PERCENT_METRICS:
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


def read_run(path: str | os.PathLike, root: str | os.PathLike | None = None) -> dict | None:
    """One ``results.json`` as a table row; ``None`` (with a logged warning) if it is not a MedPEFT
    run or is malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log.warning("skipping %s: not readable JSON (%s)", path, e)
        return None
    if not isinstance(data, dict) or data.get("kind") != "medpeft-run":
        return None  # some other results.json: not ours, not an error
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
        }
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        log.warning("skipping %s: malformed MedPEFT results (%s: %s)", path, type(e).__name__, e)
        return None


def find_results(root: str | os.PathLike) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        if "results.json" in filenames:
            found.append(Path(dirpath) / "results.json")
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


def all_rows(root: str | os.PathLike | Iterable | None = None, reference: bool = True) -> pd.DataFrame:
    parts = [reference_rows()] if reference else []
    if root is not None:
        parts.append(local_rows(root))
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else _empty()


# ------------------------------------------------------------------------------------- summaries
def _fmt_score(metric: str, mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if metric in _PERCENT_METRICS:
        s = f"{100 * mean:.1f}"
        return s + (f" ± {100 * std:.1f}" if std == std and std is not None else "")
    s = f"{mean:.2f}"
    return s + (f" ± {std:.2f}" if std == std and std is not None else "")


LEADERBOARD_COLUMNS = ["task", "backbone", "dataset", "method", "metric", "mean ± std", "trainable params",
                       "source", "fraction", "n_train"]


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
        "mean ± std": [_fmt_score(m, a, s) for m, a, s in zip(d["metric"], d["mean"], d["std"])],
        "trainable params": [t or format_params(p) for t, p in zip(d["trainable_params_text"].fillna(""),
                                                                    d["trainable_params"])],
        "source": d["source"],
        "fraction": [f"{f:g}" if f == f else "" for f in d["fraction"]],
        "n_train": [f"{int(n)}" if n == n else "" for n in d["n_train"]],
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
        "average": [round(100 * a, 1) if m in _PERCENT_METRICS else round(a, 2) for m, a in zip(g["metric"],
                                                                                              g["average"])],
        "average rank": g["rank"].round(2), "datasets": g["datasets"].astype(int),
        "trainable params": [format_params(p) for p in g["params"]],
    })
    return out.reset_index(drop=True)


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool = True) -> list[tuple[float, float]]:
    """Points (params, score) not dominated by another with fewer (or equal) params and a better
    (or equal) score; sorted by params."""
    pts = sorted(set(points), key=lambda p: (p[0], -p[1] if higher_is_better else p[1]))
    front, best = [], None
    for x, y in pts:
        if best is None or (y > best if higher_is_better else y < best):
            front.append((x, y))
            best = y
    return front


_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p", "8", "d", "H", "1", "2"]


def _plot_metric(df: pd.DataFrame) -> str | None:
    if df is None or not len(df):
        return None
    metrics = set(df["metric"])
    return "f1_macro" if "f1_macro" in metrics else ("fid" if "fid" in metrics else next(iter(sorted(metrics))))


def _figure(width: float = 8.0, height: float = 5.0):
    from matplotlib.figure import Figure  # no pyplot: thread-safe, no GUI backend

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.add_subplot(1, 1, 1)


def _message_figure(text: str):
    fig, ax = _figure(8, 2.5)
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=11, color="#555")
    return fig


def largest_fraction(df: pd.DataFrame) -> pd.DataFrame:
    """Only the rows at the largest training fraction of their source x task x backbone x dataset."""
    if df is None or not len(df):
        return df
    frac = df["fraction"].fillna(1.0)
    top = frac.groupby([df["source"], df["task"], df["backbone"], df["dataset"]]).transform("max")
    return df[frac == top]


def pareto_plot(df: pd.DataFrame, metric: str | None = None):
    """F1 (or FID) vs trainable parameters (log x): one point per source x backbone x method
    (averaged over datasets, at the largest training fraction), one marker per method, and the
    Pareto front of each source x backbone."""
    metric = metric or _plot_metric(df)
    if metric is None:
        return _message_figure("No results to plot.")
    r = ranks(largest_fraction(df[df["metric"] == metric]))
    pts = (r.groupby(["source", "backbone", "method"], sort=False)
           .agg(score=("mean", "mean"), params=("trainable_params", "mean")).reset_index())
    missing = int(pts["params"].isna().sum())
    pts = pts.dropna(subset=["params"])
    pts = pts[pts["params"] > 0]
    if not len(pts):
        return _message_figure(f"No {METRIC_LABELS.get(metric, metric)} results with trainable-parameter counts.")
    percent = metric in _PERCENT_METRICS
    pts["y"] = pts["score"] * (100 if percent else 1)
    higher = metric not in LOWER_IS_BETTER
    fig, ax = _figure(9, 5)
    methods = sorted(pts["method"].unique())
    groups = sorted(pts[["source", "backbone"]].drop_duplicates().itertuples(index=False, name=None))
    colors = [f"C{i % 10}" for i in range(len(groups))]
    color_of = dict(zip(groups, colors))
    for i, method in enumerate(methods):
        sub = pts[pts["method"] == method]
        ax.scatter(sub["params"], sub["y"], marker=_MARKERS[i % len(_MARKERS)], s=60,
                   c=[color_of[(s, b)] for s, b in zip(sub["source"], sub["backbone"])],
                   edgecolors="black", linewidths=0.5, label=method, zorder=3)
    fronts = 0
    for (s, b), c in color_of.items():  # one front per source x backbone: reported and own runs are not mixed
        sub = pts[(pts["source"] == s) & (pts["backbone"] == b)]
        front = pareto_front(list(zip(sub["params"], sub["y"])), higher_is_better=higher)
        if len(front) > 1:
            fx, fy = zip(*front)
            ax.step(fx, fy, where="post", color=c, alpha=0.7, linestyle="--", linewidth=1.2, zorder=2)
            fronts += 1
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric) + ("" if higher else " (lower is better)"))
    title = f"{METRIC_LABELS.get(metric, metric)} vs trainable parameters (mean over datasets, full training set)"
    ax.set_title(title, fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    from matplotlib.lines import Line2D

    # Marker legend (white: colour stands for backbone/source), then the colour legend.
    handles = [Line2D([], [], marker=_MARKERS[i % len(_MARKERS)], linestyle="", markerfacecolor="white",
                      markeredgecolor="black", label=m) for i, m in enumerate(methods)]
    if fronts:
        handles.append(Line2D([], [], color="grey", linestyle="--", label="Pareto front"))
    handles += [Line2D([], [], marker="o", linestyle="", color=c, markeredgecolor="black",
                       label=f"{b} ({'paper' if s == REFERENCE_SOURCE else s})") for (s, b), c in color_of.items()]
    fig.legend(handles=handles, fontsize=8, loc="outside right upper", framealpha=0.85)
    if missing:
        ax.set_xlabel(f"trainable parameters (log scale)\n{missing} method/backbone combination(s) without "
                      "reported parameter counts are not shown", fontsize=9)
    return fig


def data_volume_plot(df: pd.DataFrame, metric: str | None = None):
    """Score vs training fraction, one line per source x backbone x method (averaged over datasets).
    ``None`` when no such group has results at more than one fraction."""
    if df is None or not len(df):
        return None
    metric = metric or _plot_metric(df)
    d = df[df["metric"] == metric].copy()
    d["fraction"] = d["fraction"].fillna(1.0)
    agg = (d.groupby(["source", "backbone", "method", "fraction"], sort=True)["mean"].mean().reset_index())
    counts = agg.groupby(["source", "backbone", "method"])["fraction"].nunique()
    varying = counts[counts > 1].index.tolist()
    if not varying:
        return None
    percent = metric in _PERCENT_METRICS
    fig, ax = _figure(9, 5)
    methods = sorted({m for _, _, m in varying})
    for s, b, m in varying:
        sub = agg[(agg["source"] == s) & (agg["backbone"] == b) & (agg["method"] == m)].sort_values("fraction")
        tag = "paper" if s == REFERENCE_SOURCE else s
        ax.plot(sub["fraction"], sub["mean"] * (100 if percent else 1), marker=_MARKERS[methods.index(m) % 17],
                label=f"{m} · {b} ({tag})")
    ax.set_xscale("log")
    ax.set_xlabel("fraction of the training set (log scale)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric) + ("" if metric not in LOWER_IS_BETTER else " (lower is better)"))
    ax.set_title(f"{METRIC_LABELS.get(metric, metric)} vs training data volume", fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    fig.legend(fontsize=8, loc="outside right upper")
    return fig


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
