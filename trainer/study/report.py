"""Benchmark report in the paper's form: per task and backbone, a method x dataset table of
``ours mean ± std`` beside the value Dutt et al. 2024 report for the same cell, plus the average
score and average rank per method; Markdown and CSV, and PNG plots (Pareto, data volume).
Reads results only through :mod:`trainer.study.results` (the app's leaderboard uses the same rows)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .disk_use import disk_use, disk_use_markdown
from .efficiency import efficiency_rows
from .fairness_views import fairness_table, subgroup_attributes, subgroup_view
from .report_generation import generation_section
from .report_plots import data_volume_plot, efficiency_plot, pareto_plot
from .results import LOWER_IS_BETTER, REFERENCE_SOURCE, all_rows, format_score, local_rows, ranks, reference_rows


def _paper_lookup(ref: pd.DataFrame) -> dict:
    return {(r.backbone, r.dataset, r.method, round(float(r.fraction), 3)): (r.metric, r.mean, r.std)
            for r in ref.itertuples()}


def _by_n_train(ref: pd.DataFrame, backbone: str, dataset: str, method: str, n_train) -> tuple | None:
    """The paper's row for the same training-set size (within 1%), e.g. Table 4's 2,262 / 226 pairs."""
    if n_train is None or n_train != n_train:
        return None
    rows = ref[(ref["backbone"] == backbone) & (ref["dataset"] == dataset) & (ref["method"] == method)]
    rows = rows[(rows["n_train"] - float(n_train)).abs() <= 0.01 * rows["n_train"]]
    if not len(rows):
        return None
    r = rows.iloc[0]
    return r["metric"], r["mean"], r["std"]


def tables(local: pd.DataFrame, ref: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """One table per (task, backbone, fraction): rows = methods, columns = datasets + averages."""
    paper = _paper_lookup(ref)
    out = {}
    if not len(local):
        return out
    local = local.copy()
    local["fraction"] = local["fraction"].fillna(1.0)
    rk = ranks(local)
    for (task, backbone, fraction), part in local.groupby(["task", "backbone", "fraction"], sort=True):
        datasets = sorted(part["dataset"].unique())
        rows = []
        for method, mrows in part.groupby("method", sort=False):
            row = {"method": method}
            for ds in datasets:
                hit = mrows[mrows["dataset"] == ds]
                if not len(hit):
                    row[ds] = ""
                    continue
                h = hit.iloc[-1]
                cell = format_score(h["metric"], h["mean"], h["std"])
                ref_hit = paper.get((backbone, ds, method, round(float(fraction), 3))) or \
                    _by_n_train(ref, backbone, ds, method, h["n_train"])
                if ref_hit is not None:
                    cell += f" (paper {format_score(ref_hit[0], ref_hit[1], math.nan)})"
                row[ds] = cell
            metric = mrows["metric"].iloc[0]
            avg = mrows["mean"].mean()
            row["average"] = format_score(metric, avg, math.nan)
            r = rk[(rk["task"] == task) & (rk["backbone"] == backbone) & (rk["method"] == method)
                   & (rk["fraction"] == fraction)]
            row["average rank"] = round(float(r["rank"].mean()), 2) if len(r) else ""
            tp = mrows["trainable_params"].mean()
            row["trainable params"] = f"{tp:,.0f}" if tp == tp else ""
            row["_sort"] = avg if metric in LOWER_IS_BETTER else -avg
            rows.append(row)
        df = pd.DataFrame(rows).sort_values("_sort").drop(columns="_sort").reset_index(drop=True)
        out[f"{task} | {backbone} | fraction {fraction:g}"] = df
    return out


def _markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def fairness_markdown(local: pd.DataFrame) -> list[str]:
    """The report's fairness section: per cell, worst subgroup and calibration; per attribute, the
    test score of every group (local runs only: the paper reported neither)."""
    table = fairness_table(local)
    if not len(table):
        return []
    md = ["## Fairness and calibration per cell", "",
          "Test split, mean over seeds: the lowest-scoring subgroup over every attribute (groups under the "
          "minimum size are not scored) and the expected calibration error (15 bins) before and after "
          "temperature scaling fitted on validation.", "", _markdown(table), ""]
    for attr in subgroup_attributes(local):
        md += [f"### Test score by {attr}", "", _markdown(subgroup_view(local, attr).drop(columns="path")), ""]
    return md


class NoResultsError(ValueError):
    """The results folder is missing or holds no MedPEFT results.json: there is nothing to report."""


def write_report(results_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """Tables, the efficiency table and plots of the runs below ``results_dir``; :class:`NoResultsError`
    (nothing written) when the folder is missing or holds no MedPEFT run."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise NoResultsError(f"{results_dir} does not exist: give the --results-dir of a benchmark run")
    local = local_rows(results_dir)
    if not len(local):
        raise NoResultsError(f"no MedPEFT results.json below {results_dir}: nothing to report yet")
    out = Path(out) if out else results_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    ref = reference_rows()
    written: list[Path] = []
    eff = efficiency_rows(results_dir)
    by_task: dict[str, list[tuple[str, pd.DataFrame]]] = {}
    for title, df in tables(local, ref).items():
        by_task.setdefault(title.split(" | ")[0], []).append((title, df))
    for task, parts in by_task.items():
        md = [f"# {task}: MedPEFT results beside Dutt et al. 2024", "",
              f"Cells: ours (mean ± std over seeds; F1 in %, FID in points), and in brackets the value "
              f"{REFERENCE_SOURCE}. Average rank: 1 = best, ranked within each dataset.", ""]
        frames = []
        for title, df in parts:
            md += [f"## {title}", "", _markdown(df), ""]
            frames.append(df.assign(table=title))
        mine = eff[eff["task"] == task]
        if len(mine):
            view = mine.drop(columns=["task", "path"]).round({"mean": 4, "std": 4, "peak_memory_gb": 2,
                                                              "seconds_per_epoch": 2, "adapter_mb": 3})
            md += ["## Efficiency per run (trainable parameters, peak GPU memory, time per epoch, adapter "
                   "size, chosen hyper-parameters)", "", _markdown(view.astype(object).fillna("")), ""]
        md += fairness_markdown(local[local["task"] == task])
        if task == "generation":  # Table 4 beyond FID (trainer.study.report_generation)
            extra, files = generation_section(local, results_dir, out)
            md, written = md + extra, written + files
        md += disk_use_markdown(results_dir)
        path = out / f"{task}.md"
        path.write_text("\n".join(md))
        csv = out / f"{task}.csv"
        pd.concat(frames, ignore_index=True).to_csv(csv, index=False)
        written += [path, csv]
    if len(eff):
        path = out / "efficiency.csv"
        eff.to_csv(path, index=False)
        written.append(path)
        fig = efficiency_plot(eff)
        if fig is not None:
            path = out / "efficiency.png"
            fig.savefig(path, dpi=120, bbox_inches="tight")
            written.append(path)
    both = all_rows(results_dir)
    metric = "f1_macro" if (local["metric"] == "f1_macro").any() else str(local["metric"].iloc[0])
    fig = pareto_plot(both, metric)
    if fig is not None:
        path = out / "pareto.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        written.append(path)
    fig = data_volume_plot(local, metric)
    if fig is not None:
        path = out / "data_volume.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        written.append(path)
    path = out / "disk_use.csv"
    disk_use(results_dir).to_csv(path, index=False)
    return written + [path]
