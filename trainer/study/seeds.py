"""A benchmark cell's ``results.json`` from its one-seed runs: the runs' own results (one seed each,
trained by whichever workers took them) merged into one, with mean +- std over the seeds exactly as
the trainer computes them for a multi-seed run (:func:`trainer.loops.metrics.aggregate`)."""
from __future__ import annotations

import copy
from pathlib import Path

from ..loops.assess import aggregate_assessments, selection_score
from ..loops.metrics import aggregate
from ..run_dir import RunResults


def merge_seed_results(runs: list[dict], folders: list[str]) -> dict:
    """``runs[k]`` is the results dict of the one-seed run in ``folders[k]`` (relative to the cell)."""
    if not runs:
        raise ValueError("no seed runs to merge")
    per_seed = [copy.deepcopy(p) for r in runs for p in r["per_seed"]]
    merged = copy.deepcopy(runs[0])
    merged["per_seed"] = per_seed
    merged["seeds"] = [p["seed"] for p in per_seed]
    merged["metrics"] = {split: aggregate([p[split] for p in per_seed])
                         for split in ("test", "val") if per_seed and all(p.get(split) for p in per_seed)}
    with_val = [k for k, p in enumerate(per_seed) if p.get("val")]
    select_on = merged.get("selected_on") or "headline"
    best = max(with_val, key=lambda k: selection_score(per_seed[k], select_on)) if with_val else 0
    for key in ("fairness", "calibration", "test_interval"):  # seed 0's: recomputed over every seed
        merged.pop(key, None)
    merged.update(aggregate_assessments(per_seed, per_seed[best]["seed"]))
    merged["adapter_dir"] = f"{folders[best]}/{runs[best]['adapter_dir']}"
    merged["seed_runs"] = list(folders)
    merged["wall_time_s"] = sum(float(r.get("wall_time_s") or 0.0) for r in runs)
    if isinstance(merged.get("config"), dict):
        merged["config"]["seeds"] = list(merged["seeds"])
    return merged


def write_results(cell_dir: Path, results: dict) -> Path:
    """Atomically (RunResults.write): several workers may finish a cell's last seed at once."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    return RunResults(results).write(cell_dir)
