"""Table 4 beyond FID: per method and training fraction, KID, precision, recall, MS-SSIM diversity and
memorization (the share of samples flagged as near-copies of the run's own training images, and the
noise-norm ratio of Wen et al.) beside FID, read from each generation run's ``results.json``; and the
memorization-vs-FID plot with its Pareto front (lower is better on both)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

COLUMNS = {"fid": "FID", "kid": "KID", "precision": "precision", "recall": "recall", "coverage": "coverage",
           "ms_ssim": "MS-SSIM (diversity, lower = more diverse)", "memorization": "memorized %",
           "noise_norm_ratio": "noise-norm train/held-out"}


def generation_rows(local: pd.DataFrame, root: str | Path) -> pd.DataFrame:
    """One row per generation run: method, dataset, fraction, n_train, and each score's mean over seeds."""
    rows = []
    for r in local[local["task"] == "generation"].itertuples():
        path = Path(root) / r.path / "results.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        test = (data.get("metrics") or {}).get("test") or {}
        row = {"method": r.method, "dataset": r.dataset, "fraction": r.fraction, "n_train": r.n_train}
        for key in COLUMNS:
            if key in test:
                row[key] = test[key]["mean"] * (100.0 if key == "memorization" else 1.0)
        ratios = [(s.get("noise_norm") or {}).get("ratio") for s in data.get("per_seed") or []]
        ratios = [x for x in ratios if isinstance(x, (int, float))]
        if ratios:
            row["noise_norm_ratio"] = sum(ratios) / len(ratios)
        rows.append(row)
    return pd.DataFrame(rows)


def pareto_mask(x: list[float], y: list[float]) -> list[bool]:
    """Points no other point beats on both (lower is better on both)."""
    return [not any((x[j] <= x[i] and y[j] <= y[i]) and (x[j] < x[i] or y[j] < y[i]) for j in range(len(x)))
            for i in range(len(x))]


def front_plot(points: list[tuple[float, float, bool, str]], xname: str, yname: str, path: str | Path,
               title: str = "") -> Path:
    """Scatter of (x, y, on_front, label) points, the front joined by a step line; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for x, y, on, label in points:
        ax.scatter([x], [y], s=46 if on else 24, c="tab:red" if on else "tab:gray", zorder=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=8)
    front = sorted((p[0], p[1]) for p in points if p[2])
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", c="tab:red", lw=1, alpha=0.7)
    ax.set_xlabel(xname)
    ax.set_ylabel(yname)
    ax.set_title(title or f"{yname} vs {xname} (red: Pareto front)")
    ax.grid(alpha=0.3)
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def generation_section(local: pd.DataFrame, root: str | Path, out: str | Path) -> tuple[list[str], list[Path]]:
    """Markdown lines for the task's report and the files written (CSV, memorization-vs-FID plot)."""
    table = generation_rows(local, root)
    if not len(table) or len(table.columns) <= 5:
        return [], []
    cols = [c for c in COLUMNS if c in table.columns]
    view = table[["method", "dataset", "fraction", "n_train", *cols]].rename(columns=COLUMNS)
    view = view.sort_values(["dataset", "fraction", "FID"]).round(4)
    lines = ["## Beyond FID (test split): KID, precision/recall/coverage (k = 5), MS-SSIM diversity, memorization",
             "", "Memorized %: generated images flagged as near-copies of the run's own training images at a "
             "threshold calibrated on held-out real images (trainer.geneval); noise-norm ratio > 1: training "
             "prompts pull harder than held-out ones (Wen et al.).", ""]
    header = "| " + " | ".join(view.columns) + " |"
    lines += [header, "|" + "---|" * len(view.columns)]
    lines += ["| " + " | ".join("" if (isinstance(v, float) and math.isnan(v)) else str(v) for v in row) + " |"
              for row in view.itertuples(index=False)]
    out = Path(out)
    written = [out / "generation_metrics.csv"]
    view.to_csv(written[0], index=False)
    if "memorization" in table.columns:
        t = table.dropna(subset=["fid", "memorization"])
        if len(t):
            mask = pareto_mask(list(t["fid"]), list(t["memorization"]))
            points = [(r.fid, r.memorization, m, f"{r.method} {r.fraction:g}") for r, m in zip(t.itertuples(), mask)]
            written.append(front_plot(points, "FID (lower is better)", "memorized % (lower is better)",
                                      out / "memorization_vs_fid.png", "Memorization vs FID per method and fraction"))
            lines += ["", f"Pareto front (memorization vs FID): {', '.join(p[3] for p in points if p[2])}; "
                      f"plot: memorization_vs_fid.png", ""]
    return lines, written
