"""The efficiency table of a benchmark report, as peft's method_comparison puts it beside the score:
per run (cell), the test score, trainable parameters of that run, peak GPU memory, training time per
epoch, adapter file size and the hyper-parameters the search chose (or the grid set)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..run_dir import ResultsError, RunResults
from .results import find_results, read_run

EFFICIENCY_COLUMNS = ["task", "backbone", "dataset", "fraction", "method", "metric", "mean", "std",
                      "trainable_params", "peak_memory_gb", "seconds_per_epoch", "adapter_mb", "chosen", "path"]
WEIGHTS_FILE = "adapter_model.safetensors"


def _mean(values: list[float]) -> float:
    values = [v for v in values if isinstance(v, (int, float)) and v == v]
    return sum(values) / len(values) if values else math.nan


def _chosen(data: dict) -> str:
    """What the cell trained with: the search's choice when there was one, else the run's config."""
    chosen = data.get("chosen") or {}
    cfg = data.get("config") or {}
    lr = chosen.get("lr", cfg.get("lr"))
    wd = chosen.get("weight_decay", cfg.get("weight_decay"))
    hp = chosen.get("hparams", cfg.get("hparams")) or {}
    parts = [f"lr={lr:.3g}" if isinstance(lr, (int, float)) else None,
             f"wd={wd:.3g}" if isinstance(wd, (int, float)) else None]
    parts += [f"{k}={v}" for k, v in sorted(hp.items())]
    return ", ".join(p for p in parts if p)


def efficiency_row(path: Path, root: Path) -> dict | None:
    row = read_run(path, root)
    if row is None:
        return None
    try:
        found = RunResults.read(path)
    except ResultsError:
        return None
    data = found.data
    per_seed = data.get("per_seed") or []
    peaks = [p.get("peak_memory_bytes") for p in per_seed]
    per_epoch = [float(p["wall_time_s"]) / max(1, int(p.get("epochs_run") or 1))
                 for p in per_seed if isinstance(p.get("wall_time_s"), (int, float))]
    weights = found.adapter_path / WEIGHTS_FILE if found.adapter_path else None
    return {
        **{k: row[k] for k in ("task", "backbone", "dataset", "fraction", "method", "metric", "mean", "std",
                               "trainable_params", "path")},
        "peak_memory_gb": _mean(peaks) / 1e9 if _mean(peaks) == _mean(peaks) else math.nan,
        "seconds_per_epoch": _mean(per_epoch),
        "adapter_mb": weights.stat().st_size / 1e6 if weights is not None and weights.is_file() else math.nan,
        "chosen": _chosen(data),
    }


def efficiency_rows(results_dir: str | Path) -> pd.DataFrame:
    """One row per MedPEFT run below ``results_dir`` (cells of a sweep, or plain runs)."""
    root = Path(results_dir)
    rows = [r for p in find_results(root) if (r := efficiency_row(p, root)) is not None]
    df = pd.DataFrame(rows, columns=EFFICIENCY_COLUMNS)
    return df.sort_values(["task", "backbone", "dataset", "fraction", "method"]).reset_index(drop=True)
