"""The benchmark report's plots, one marker and one colour per method in every plot (the method's
place in the registry decides both), our runs filled, the paper's values hollow."""
from __future__ import annotations

import math

import pandas as pd


from .plots import largest_fraction, method_style, pareto_front
from .results import LOCAL_SOURCE, LOWER_IS_BETTER, METRIC_LABELS

PERCENT = {"f1_macro", "auroc", "accuracy", "balanced_accuracy"}




def _figure(panels: int = 1, width: float = 8.0, height: float = 4.8):
    from matplotlib.figure import Figure  # no pyplot: thread-safe, no GUI backend

    fig = Figure(figsize=(width * panels, height), dpi=100, layout="constrained")
    return fig, [fig.add_subplot(1, panels, k + 1) for k in range(panels)]


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric) + (" (lower is better)" if metric in LOWER_IS_BETTER else "")


def _scale(metric: str) -> float:
    return 100.0 if metric in PERCENT else 1.0


def _scatter(ax, x, y, method: str, ours: bool, label: str | None = None) -> None:
    marker, colour = method_style(method)
    ax.scatter(x, y, marker=marker, s=60, zorder=3, label=label, edgecolors=colour if not ours else "black",
               facecolors=colour if ours else "none", linewidths=1.2 if not ours else 0.5)


def _legend(fig, methods: list[str], paper: bool) -> None:
    from matplotlib.lines import Line2D

    handles = []
    for m in methods:
        marker, colour = method_style(m)
        handles.append(Line2D([], [], marker=marker, linestyle="", markerfacecolor=colour, markeredgecolor="black",
                              label=m))
    if paper:
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="grey",
                              label="hollow: the paper's value"))
    fig.legend(handles=handles, fontsize=8, loc="outside right upper")


def pareto_plot(df: pd.DataFrame, metric: str):
    """Score vs trainable parameters (log), one panel per backbone, one point per source x method
    (mean over datasets at the largest training fraction) and each source's Pareto front."""
    d = largest_fraction(df[(df["metric"] == metric) & (df["trainable_params"] > 0)])
    if d is None or not len(d):
        return None
    pts = (d.groupby(["backbone", "source", "method"], sort=True)
           .agg(score=("mean", "mean"), params=("trainable_params", "mean")).reset_index())
    backbones = sorted(pts["backbone"].unique())
    fig, axes = _figure(len(backbones), 6, 4.5)
    for ax, bb in zip(axes, backbones):
        part = pts[pts["backbone"] == bb]
        for r in part.itertuples():
            _scatter(ax, r.params, r.score * _scale(metric), r.method, r.source == LOCAL_SOURCE)
        for source, sub in part.groupby("source"):
            front = pareto_front(list(zip(sub["params"], sub["score"] * _scale(metric))),
                                 higher_is_better=metric not in LOWER_IS_BETTER)
            if len(front) > 1:
                fx, fy = zip(*front)
                ax.step(fx, fy, where="post", color="grey", alpha=0.6,
                        linestyle="-" if source == LOCAL_SOURCE else ":", linewidth=1)
        ax.set_xscale("log")
        ax.set_title(bb, fontsize=10)
        ax.set_xlabel("trainable parameters (log)")
        ax.set_ylabel(_label(metric))
        ax.grid(True, which="both", alpha=0.3)
    _legend(fig, sorted(pts["method"].unique()), paper=(pts["source"] != LOCAL_SOURCE).any())
    return fig


def data_volume_plot(df: pd.DataFrame, metric: str):
    """Score vs training fraction, one line per source x backbone x method (mean over datasets);
    ``None`` when no method has results at more than one fraction."""
    d = df[df["metric"] == metric].copy()
    d["fraction"] = d["fraction"].fillna(1.0)
    agg = d.groupby(["source", "backbone", "method", "fraction"], sort=True)["mean"].mean().reset_index()
    n = agg.groupby(["source", "backbone", "method"])["fraction"].nunique()
    groups = n[n > 1].index.tolist()
    if not groups:
        return None
    fig, (ax,) = _figure(1, 8, 4.8)
    for source, bb, m in groups:
        sub = agg[(agg["source"] == source) & (agg["backbone"] == bb) & (agg["method"] == m)]
        marker, colour = method_style(m)
        ours = source == LOCAL_SOURCE
        ax.plot(sub["fraction"], sub["mean"] * _scale(metric), marker=marker, color=colour,
                linestyle="-" if ours else ":", markerfacecolor=colour if ours else "none")
    ax.set_xscale("log")
    ax.set_xlabel("fraction of the training set (log)")
    ax.set_ylabel(_label(metric))
    ax.grid(True, which="both", alpha=0.3)
    _legend(fig, sorted({m for _, _, m in groups}), paper=any(s != LOCAL_SOURCE for s, _, _ in groups))
    return fig


EFFICIENCY_AXES = [("seconds_per_epoch", "train time per epoch (s, log)"),
                   ("peak_memory_gb", "peak GPU memory (GB, log)"),
                   ("adapter_mb", "adapter file (MB, log)")]


def efficiency_plot(eff: pd.DataFrame):
    """Score vs train time per epoch, peak memory and adapter size: one point per run (cell)."""
    if eff is None or not len(eff):
        return None
    metric = eff["metric"].iloc[0]
    eff = eff[eff["metric"] == metric]
    fig, axes = _figure(len(EFFICIENCY_AXES), 5, 4.2)
    for ax, (col, label) in zip(axes, EFFICIENCY_AXES):
        sub = eff[eff[col].notna() & (eff[col] > 0)]
        if not len(sub):
            ax.text(0.5, 0.5, f"no {label.split(' (')[0]} recorded\n(CPU runs record no GPU memory)", ha="center",
                    va="center", transform=ax.transAxes, fontsize=9, color="#555")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        for r in sub.itertuples():
            _scatter(ax, getattr(r, col), r.mean * _scale(metric), r.method, True)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(_label(metric))
        ax.grid(True, which="both", alpha=0.3)
    _legend(fig, sorted(eff["method"].unique()), paper=False)
    return fig


def finite(x) -> bool:
    return isinstance(x, (int, float)) and not (isinstance(x, float) and math.isnan(x))
