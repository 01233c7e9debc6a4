"""Fairness views of local runs (issue: subgroup metrics with every result): the leaderboard's view per
subgroup attribute and the benchmark report's fairness table per cell, both from the rows of
:func:`trainer.study.results.local_rows` (columns ``subgroups``, ``worst_group``, ``ece``)."""
from __future__ import annotations

import math

import pandas as pd

from ..data.subgroups import group_order
from .results import format_score


def subgroup_view(df: pd.DataFrame, attribute: str) -> pd.DataFrame:
    """One row per local run that has subgroups for ``attribute``: its overall score and the mean test
    score of each group (in %, as the leaderboard), the gap and the worst group."""
    rows, groups = [], set()
    for _, r in (df if df is not None else pd.DataFrame()).iterrows():
        scores = (r.get("subgroups") or {}).get(attribute) if isinstance(r.get("subgroups"), dict) else None
        if not scores:
            continue
        groups |= set(scores)
        valid = {g: v for g, v in scores.items() if isinstance(v, (int, float))}
        worst = min(valid, key=valid.get) if len(valid) >= 2 else f"n/a: {len(valid)} group{'s' * (len(valid) != 1)} scored"
        rows.append({"backbone": r["backbone"], "dataset": r["dataset"], "method": r["method"],
                     "fraction": f"{r['fraction']:g}", "overall": format_score(r["metric"], r["mean"], r["std"]),
                     **{g: format_score(r["metric"], v, math.nan) for g, v in scores.items()},
                     "gap": format_score(r["metric"], max(valid.values()) - min(valid.values()), math.nan)
                     if len(valid) >= 2 else "n/a", "worst group": worst, "path": r["path"]})
    columns = ["backbone", "dataset", "method", "fraction", "overall"] + sorted(groups, key=group_order) + \
        ["gap", "worst group", "path"]
    return pd.DataFrame(rows, columns=columns).fillna("")


def subgroup_attributes(df: pd.DataFrame) -> list[str]:
    """The subgroup attributes any local run in ``df`` reports (sex, age, skin_type, ...)."""
    found = set()
    for v in (df["subgroups"] if df is not None and "subgroups" in df else []):
        if isinstance(v, dict):
            found |= set(v)
    return sorted(found)


def fairness_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per local run (a benchmark cell): overall test score, the worst subgroup and its score,
    the test ECE raw and temperature-scaled; runs without subgroups or calibration are left out."""
    if df is None or not len(df):
        return pd.DataFrame()
    d = df[df["worst_group"].notna() | df["ece"].notna()]
    rows = [{"backbone": r["backbone"], "dataset": r["dataset"], "method": r["method"],
             "fraction": f"{r['fraction']:g}", "overall": format_score(r["metric"], r["mean"], r["std"]),
             "worst group": r["worst_group_name"] or "",
             "worst-group score": format_score(r["metric"], r["worst_group"], math.nan),
             "ECE raw": f"{r['ece']:.3f}" if r["ece"] == r["ece"] else "",
             "ECE calibrated": f"{r['ece_calibrated']:.3f}" if r["ece_calibrated"] == r["ece_calibrated"] else ""}
            for _, r in d.iterrows()]
    return pd.DataFrame(rows)
