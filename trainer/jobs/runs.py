"""The Train tab's run folders: where a run goes (``<adapters dir>/trained/<name>-<time>``), its
results.json read and written (through :class:`trainer.run_dir.RunResults`, the one owner of that file),
the summary of a finished run, and the run an adapter came from.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..run_dir import RunResults
from .session import safe_run_name


def new_run_dir(adapters_dir: str | os.PathLike, *names: str | None) -> Path:
    """A run folder that does not exist yet: the first usable of ``names`` (made safe), a time stamp,
    and ``-2``, ``-3`` ... when that is taken."""
    name = next((n for n in (safe_run_name(x) for x in names) if n), "run")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(adapters_dir) / "trained"
    run_dir, k = base / f"{name}-{stamp}", 2
    while run_dir.exists():
        run_dir, k = base / f"{name}-{stamp}-{k}", k + 1
    return run_dir


def read_results(run_dir: str | os.PathLike) -> dict[str, Any]:
    return RunResults.read(run_dir).data


def write_results(run_dir: str | os.PathLike, results: dict[str, Any]) -> Path:
    """results.json, atomically (RunResults.write)."""
    return RunResults(results).write(run_dir)


def results_for_adapter(adapter_folder: str | os.PathLike) -> dict[str, Any] | None:
    """The results.json of the run that saved ``adapter_folder`` (``<run>/seed_N/adapter``), or None."""
    found = RunResults.of_adapter(adapter_folder)
    return found.data if found is not None else None


def best_seed(results: dict[str, Any]) -> dict[str, Any]:
    """The per-seed result whose adapter was kept (``adapter_dir`` names its seed folder)."""
    return next((r for r in results["per_seed"] if f"seed_{r['seed']}/" in results["adapter_dir"]),
                results["per_seed"][0])


def run_summary(results: dict[str, Any], run_dir: str | os.PathLike, adapter_key: str | None) -> dict[str, Any]:
    """The finished run in short (JSON-able): where it is, what trained, test metrics, HPO."""
    seed = best_seed(results)
    test = seed["test"]
    return {
        "adapter_key": adapter_key, "run_dir": str(run_dir),
        "adapter_dir": str((Path(run_dir) / results["adapter_dir"]).resolve()),
        "method": results["method"], "backbone": results["backbone"], "dataset": results["dataset"],
        "class_names": results.get("class_names") or [], "split_sizes": results.get("split_sizes"),
        "test": {k: v for k, v in test.items() if isinstance(v, (int, float))},
        "per_class_f1": test.get("per_class_f1"), "confusion_matrix": test.get("confusion_matrix"),
        "best_epoch": seed.get("best_epoch"), "epochs_run": seed.get("epochs_run"),
        "trainable_params": results.get("trainable_params"), "total_params": results.get("total_params"),
        "wall_time_s": round(float(results.get("wall_time_s") or 0), 1),
        "stopped_early_by_user": bool(results.get("stopped_early_by_user")),
        "quick_hpo": results.get("quick_hpo"),
    }
