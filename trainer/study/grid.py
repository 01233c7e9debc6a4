"""A benchmark grid file (YAML, see :mod:`trainer.study.benchmark`): reading it, its cells (method x
dataset x backbone x fraction), each cell's TrainConfig and its search space."""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..preflight import check_number
from ..config import FIELDS, ConfigError, TrainConfig
from . import hpo

GRID_KEYS = ("method", "dataset", "backbone", "fraction")
HPO_KEYS = ("trials", "min_resource", "reduction_factor", "lr_ranges", "objective",
            "objectives", "population")  # the last two: generation's NSGA-II search (trainer.study.hpo_generation)


@dataclass(frozen=True)
class Cell:
    method: str
    dataset: str
    backbone: str | None
    fraction: float

    @property
    def key(self) -> str:
        bb = (self.backbone or "default").replace("/", "_")
        return f"{self.dataset}/{bb}/{self.method}/frac_{self.fraction:g}"


def load_grid(path: str | Path) -> dict[str, Any]:
    try:
        grid = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read grid {path}: {e}") from None
    if not isinstance(grid, dict) or "grid" not in grid:
        raise ConfigError(f"{path}: a grid file needs a 'grid' mapping (keys {', '.join(GRID_KEYS)})")
    unknown = set(grid["grid"]) - set(GRID_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown grid keys {sorted(unknown)}; use {', '.join(GRID_KEYS)}")
    bad = set(grid.get("base", {})) - set(FIELDS)
    if bad:
        raise ConfigError(f"{path}: unknown base options {sorted(bad)}")
    bad = set(grid.get("hpo") or {}) - set(HPO_KEYS)
    if bad:
        raise ConfigError(f"{path}: unknown hpo options {sorted(bad)}; use {', '.join(HPO_KEYS)}")
    h = grid.get("hpo") or {}
    for key, lo in (("trials", 0), ("min_resource", 1), ("reduction_factor", 2)):
        if h.get(key) is not None:
            check_number(f"{path}: hpo {key}", h[key], lo)
    grid.setdefault("name", Path(path).stem)
    return grid


def cells(grid: dict[str, Any]) -> list[Cell]:
    g = grid["grid"]
    values = [g.get("method", ["lora"]), g.get("dataset", ["imagefolder"]), g.get("backbone", [None]),
              g.get("fraction", [1.0])]
    return [Cell(m, d, b, float(f)) for m, d, b, f in itertools.product(*values)]


def override(grid: dict[str, Any], cell: Cell) -> dict[str, Any]:
    return copy.deepcopy((grid.get("overrides") or {}).get(cell.method, {}))


def cell_config(grid: dict[str, Any], cell: Cell, results_dir: Path) -> TrainConfig:
    values = copy.deepcopy(grid.get("base", {}))
    values.update(override(grid, cell))
    values.update(method=cell.method, dataset=cell.dataset, fraction=cell.fraction,
                  output_dir=str(Path(results_dir) / cell.key), seeds=list(grid.get("seeds", [0])))
    if cell.backbone:
        values["backbone"] = cell.backbone
    checkpoints = grid.get("init_checkpoints") or {}  # per backbone (foundation presets' files or repo copies)
    if cell.backbone in checkpoints:
        values["init_checkpoint"] = str(checkpoints[cell.backbone])
    data_dirs = grid.get("data_dirs") or {}
    if cell.dataset in data_dirs:
        values["data_dir"] = str(data_dirs[cell.dataset])
    lists = grid.get("split_lists") or {}
    if cell.dataset in lists:  # MED-PEFT: the fraction axis picks train_1 / train_10 / train_list
        values.update(split_lists=str(lists[cell.dataset]), label_fraction=int(round(cell.fraction * 100)),
                      fraction=1.0)
    objective = (grid.get("hpo") or {}).get("objective", "headline")
    if objective not in hpo.OBJECTIVES:
        raise ConfigError(f"hpo objective must be one of {', '.join(hpo.OBJECTIVES)}, got {objective!r}")
    if objective != "headline":  # FairTune: search, select epochs and seeds on the worst subgroup
        values["select_on"] = objective
    values.setdefault("lr", hpo.default_lr(values.get("task", "classification"), cell.method))
    return TrainConfig(**values).validate()


def fixed_names(grid: dict[str, Any], cell: Cell) -> set[str]:
    """What the cell's per-method override sets: kept as set, not searched."""
    o = override(grid, cell)
    return {k for k in ("lr", "weight_decay") if k in o} | set(o.get("hparams") or {})


def search_trials(grid: dict[str, Any], cfg: TrainConfig) -> int:
    """ASHA trials for the cell: the grid's ``hpo.trials``; none for generation (its multi-objective search
    runs through :func:`trainer.study.hpo_generation.cell_search`)."""
    return int((grid.get("hpo") or {}).get("trials", 0)) if cfg.task == "classification" else 0


def cell_space(grid: dict[str, Any], cell: Cell, cfg: TrainConfig) -> dict[str, tuple]:
    space = hpo.search_space(cfg.task, cell.method, cfg.hparams, fixed_names(grid, cell))
    ranges = (grid.get("hpo") or {}).get("lr_ranges") or {}
    if "lr" in space and cell.method in ranges:
        space["lr"] = ("log", tuple(float(v) for v in ranges[cell.method]))
    return space
