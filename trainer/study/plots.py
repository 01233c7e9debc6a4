"""Figures of the results table (:mod:`trainer.study.results`): matplotlib ``Figure`` objects, no pyplot.

    pareto_plot(df)        # F1 vs trainable parameters, with the Pareto front per source x backbone
    data_volume_plot(df)   # F1 vs training fraction (None when fractions do not vary)
"""
from __future__ import annotations

import hashlib

import pandas as pd

from adapters import METHODS

from .results import LOWER_IS_BETTER, METRIC_LABELS, PERCENT_METRICS, REFERENCE_SOURCE, ranks


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


MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p", "8", "d", "H"]


def method_style(method: str) -> tuple[str, str]:
    """(marker, colour) of a method, the same in every plot and every report."""
    import matplotlib

    names = sorted(METHODS)
    i = names.index(method) if method in names else \
        len(names) + int(hashlib.sha256(method.encode()).hexdigest(), 16) % 97
    colour = matplotlib.colormaps["tab20"](i % 20)
    return MARKERS[i % len(MARKERS)], matplotlib.colors.to_hex(colour)


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
    percent = metric in PERCENT_METRICS
    pts["y"] = pts["score"] * (100 if percent else 1)
    higher = metric not in LOWER_IS_BETTER
    fig, ax = _figure(9, 5)
    methods = sorted(pts["method"].unique())
    groups = sorted(pts[["source", "backbone"]].drop_duplicates().itertuples(index=False, name=None))
    colors = [f"C{i % 10}" for i in range(len(groups))]
    color_of = dict(zip(groups, colors))
    for method in methods:
        sub = pts[pts["method"] == method]
        ax.scatter(sub["params"], sub["y"], marker=method_style(method)[0], s=60,
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
    handles = [Line2D([], [], marker=method_style(m)[0], linestyle="", markerfacecolor="white",
                      markeredgecolor="black", label=m) for m in methods]
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
    percent = metric in PERCENT_METRICS
    fig, ax = _figure(9, 5)
    for s, b, m in varying:
        sub = agg[(agg["source"] == s) & (agg["backbone"] == b) & (agg["method"] == m)].sort_values("fraction")
        tag = "paper" if s == REFERENCE_SOURCE else s
        ax.plot(sub["fraction"], sub["mean"] * (100 if percent else 1), marker=method_style(m)[0],
                label=f"{m} · {b} ({tag})")
    ax.set_xscale("log")
    ax.set_xlabel("fraction of the training set (log scale)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric) + ("" if metric not in LOWER_IS_BETTER else " (lower is better)"))
    ax.set_title(f"{METRIC_LABELS.get(metric, metric)} vs training data volume", fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    fig.legend(fontsize=8, loc="outside right upper")
    return fig
