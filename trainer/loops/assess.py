"""Judging a model on a split: its predictions, metrics, and beyond the headline, calibration,
subgroups and an interval.

:func:`predict` gathers a split's logits in split order; :func:`evaluate` scores them. After the
best-validation checkpoint is tested, :func:`assess_seed` takes the whole validation and test splits'
logits (gathered over processes, in split order) and returns what results.json, the adapter config
and the model card carry:

- ``calibration`` (trainer.loops.calibration): ECE (15 bins), Brier and NLL on val and test, before and
  after temperature scaling fitted on validation only; the temperature goes into the adapter config.
- ``subgroups`` (trainer.loops.fairness): per-group headline, accuracy and counts on val and test,
  worst group, gap, equalized-odds and demographic-parity differences for every subgroup attribute the
  dataset carries (DatasetIndex.subgroups); groups under ``min_group_size`` are listed, not scored.
- ``test_interval`` (trainer.loops.bootstrap): a seeded percentile-bootstrap 95% interval of the test
  headline, resampling whole patients / lesions where the dataset has groups.
- a reliability diagram PNG (test split, raw and temperature-scaled) beside the seed's adapter.

:func:`aggregate_assessments` reduces the seeds' assessments to mean +- std for results.json.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

import torch
from tqdm.auto import tqdm

from .bootstrap import headline_interval
from .calibration import calibration_report, reliability_diagram
from .fairness import subgroup_metrics, worst_group_text
from .metrics import classification_metrics, headline

RELIABILITY_NAME = "reliability.png"
SELECT_ON = ("headline", "worst_group")


@torch.no_grad()
def predict(model, loader, accelerator, desc: str = "evaluating") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) over the whole split, in its order: every process's shard gathered (each image
    once; accelerate drops the padding of the last, uneven shard)."""
    model.eval()
    all_logits, all_targets = [], []
    for x, y in tqdm(loader, desc=desc, disable=not accelerator.is_main_process, leave=False, dynamic_ncols=True):
        with accelerator.autocast():
            logits = model(x)
        logits, y = accelerator.gather_for_metrics((logits.float(), y))
        all_logits.append(logits.cpu())
        all_targets.append(y.cpu())
    return torch.cat(all_logits), torch.cat(all_targets)


def evaluate(model, loader, accelerator, class_names, multilabel, desc: str = "evaluating") -> dict:
    """The split's metrics (metrics.classification_metrics) from :func:`predict`."""
    return classification_metrics(*predict(model, loader, accelerator, desc), class_names, multilabel)


def split_subgroups(index, rows) -> dict:
    """{attribute: values of the images at ``rows``} (a split's images, in split order)."""
    rows = np.asarray(rows, dtype=int)
    return {k: np.asarray(v)[rows] for k, v in (index.subgroups or {}).items()}


def worst_group_score(logits, targets, index, rows, min_size: int) -> float | None:
    """The lowest scored subgroup's headline over every attribute (FairTune's selection criterion)."""
    report = subgroup_metrics(logits, targets, split_subgroups(index, rows), index.class_names,
                              index.multilabel, min_size)
    return report["worst_group_score"]


def assess_seed(val: tuple, test: tuple | None, index, splits: dict, out_dir: str | Path | None, *,
                min_group_size: int = 30, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Calibration, subgroup metrics and the test interval of one seed. ``val``/``test``: (logits,
    targets) over the whole split in the order of ``splits["val"]``/``splits["test"]``; ``test`` None
    (an HPO trial) assesses validation only: no test-side calibration, subgroups, interval or diagram.
    ``out_dir``: where the reliability diagram goes (None: not drawn, e.g. on a non-main process)."""
    multilabel = index.multilabel
    scored = {"val": val} if test is None else {"val": val, "test": test}
    calibration = calibration_report(val[0], val[1], scored, multilabel)
    subgroups = {}
    if index.subgroups:
        for name, (logits, targets) in scored.items():
            subgroups[name] = subgroup_metrics(logits, targets, split_subgroups(index, splits[name]),
                                               index.class_names, multilabel, min_group_size)
    interval = None
    if test is not None and n_resamples > 0 and len(test[1]):
        groups = None if index.groups is None else np.asarray(index.groups)[np.asarray(splits["test"], dtype=int)]
        interval = headline_interval(test[0], test[1], multilabel, groups=groups, n_resamples=n_resamples,
                                     seed=seed)
    out = {"calibration": calibration, "subgroups": subgroups, "test_interval": interval, "reliability": None}
    if test is None:
        del out["test_interval"]
    if out_dir is not None and test is not None and len(test[1]):
        path = reliability_diagram(test[0], test[1], Path(out_dir) / RELIABILITY_NAME, multilabel,
                                   calibration["temperature"], title=f"Reliability, test split (seed {seed})")
        out["reliability"] = path.name
    return out


def _stats(values) -> dict | None:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    if not vals:
        return None
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
            "n": len(vals)}


def _calibration_summary(reports: list[dict]) -> dict:
    out = {"temperature": [r["temperature"] for r in reports], "n_bins": reports[0]["n_bins"], "fitted_on": "val"}
    for split in [s for s in ("val", "test") if all(s in r for r in reports)]:
        out[split] = {when: {k: _stats(r[split][when][k] for r in reports) for k in reports[0][split][when]}
                      for when in ("before", "after")}
    return out


def _fairness_summary(reports: list[dict]) -> dict:
    first = reports[0]
    out = {"headline": first["headline"], "min_group_size": first["min_group_size"],
           "worst_group_score": _stats(r["worst_group_score"] for r in reports), "attributes": {}}
    for attr, a in first["attributes"].items():
        per = [r["attributes"][attr] for r in reports if attr in r["attributes"]]
        worst = [p["worst_group"] for p in per if p["worst_group"] is not None]
        groups = {}
        for value, g in a["groups"].items():
            gs = [p["groups"].get(value, {}) for p in per]
            groups[value] = {"n": g["n"], "scored": g["scored"], "score": _stats(x.get("score") for x in gs),
                             "accuracy": _stats(x.get("accuracy") for x in gs)}
        out["attributes"][attr] = {
            "groups": groups, "too_small": a["too_small"],
            "scored_groups": min(p.get("scored_groups", len(p["groups"])) for p in per),
            "worst_group": max(set(worst), key=worst.count) if worst else None,  # the most frequent over seeds
            **{k: _stats(p[k] for p in per) for k in ("worst_score", "best_score", "gap",
                                                      "equalized_odds_difference", "demographic_parity_difference")}}
    return out


def aggregate_assessments(per_seed: list[dict], best_seed: int) -> dict:
    """results.json's ``calibration``, ``fairness`` ({val, test}) and ``test_interval`` (the best
    seed's, beside the mean +- std over seeds) from the seeds' :func:`assess_seed` outputs."""
    assessed = [r["assessment"] for r in per_seed if r.get("assessment")]
    if not assessed:
        return {}
    out = {"calibration": _calibration_summary([a["calibration"] for a in assessed])}
    if all(a["subgroups"] for a in assessed):
        out["fairness"] = {s: _fairness_summary([a["subgroups"][s] for a in assessed]) for s in ("val", "test")
                           if all(s in a["subgroups"] for a in assessed)}
    best = next((r["assessment"] for r in per_seed if r["seed"] == best_seed and r.get("assessment")), assessed[0])
    if best.get("test_interval"):
        out["test_interval"] = {**best["test_interval"], "seed": best_seed}
    return out


def selection_score(seed_result: dict, select_on: str = "headline") -> float:
    """The validation score a seed is chosen by: its headline, or (``worst_group``) its worst subgroup's."""
    if select_on == "worst_group":
        val = ((seed_result.get("assessment") or {}).get("subgroups") or {}).get("val") or {}
        score = val.get("worst_group_score")
        return float(score) if score is not None else -math.inf
    return headline(seed_result["val"])


def adapter_metrics(val: dict, test: dict | None) -> dict:
    """The adapter config's metrics: ``test_*`` scalars, or ``val_*`` for an HPO trial (never tested)."""
    split, scores = ("val", val) if test is None else ("test", test)
    return {f"{split}_{k}": v for k, v in scores.items() if isinstance(v, float)}


def card_calibration(assessment: dict) -> dict:
    """What an adapter config keeps of a seed's assessment: test ECE / Brier / NLL before and after its
    temperature, the test interval and each attribute's worst group (the model card shows them)."""
    cal = assessment["calibration"]
    out = {"fitted_on": "val", "n_bins": cal["n_bins"], "val": cal["val"]}
    if "test" in cal:  # an HPO trial's adapter carries no test-side numbers
        out.update(test=cal["test"], test_interval=assessment.get("test_interval"))
    test_groups = (assessment.get("subgroups") or {}).get("test")
    if test_groups:
        out["subgroups"] = {attr: {"groups": {v: {"n": g["n"], "score": g["score"]} for v, g in a["groups"].items()},
                                   "worst_group": a["worst_group"], "gap": a["gap"]}
                            for attr, a in test_groups["attributes"].items()}
        out["subgroup_metric"] = test_groups["headline"]
    return out


def _pct(stats: dict | None) -> str:
    return "n/a" if not stats else f"{100 * stats['mean']:.2f} +- {100 * stats['std']:.2f}"


def assessment_lines(results: dict) -> list[str]:
    """The terminal summary's lines for worst group, calibration and the interval."""
    lines = []
    interval = results.get("test_interval")
    if interval and interval.get("low") == interval.get("low"):
        lines.append(f"  test 95% interval  {100 * interval['low']:.2f} .. {100 * interval['high']:.2f} "
                     f"(bootstrap by {interval['resampled_by']}, seed {interval['seed']})")
    fairness = (results.get("fairness") or {}).get("test")
    if fairness:
        for attr, a in fairness["attributes"].items():
            lines.append(f"  subgroups {attr:9s} {worst_group_text(a, _pct)}")
    cal = (results.get("calibration") or {}).get("test")
    if cal and cal["before"].get("ece"):
        lines.append(f"  test ECE           {_pct(cal['before']['ece'])} raw -> {_pct(cal['after']['ece'])} "
                     f"temperature-scaled")
    return lines
