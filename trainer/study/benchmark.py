"""Benchmark sweeps that reproduce the paper's tables.

    python -m trainer.benchmark run benchmarks/table2_resnet50.yaml --results-dir results/ [--worker-id gpu0]
    python -m trainer.benchmark report results/            # Markdown + CSV tables and PNG plots

A grid file (YAML)::

    name: table2_resnet50
    base: {epochs: 50, patience: 10, batch_size: 64}     # TrainConfig defaults for every cell
    data_dirs: {ham10000: /data/HAM10000, breastus: /data/BUSI}
    grid:                                                 # the cross product is the set of cells
      method: [full, linear_probe, tsa, batchnorm, bias, ssf]
      dataset: [ham10000, breastus]
      backbone: [resnet50.a1_in1k]
      fraction: [1.0]
    seeds: [0, 1, 2]                                      # every cell runs all seeds
    hpo: {trials: 0}                                      # >0: ASHA search per cell, then the seeds
    overrides:                                            # per-method extra config (optional)
      lora: {hparams: {rank: 8}}

Running executes every cell through the trainer, skips cells already finished (their
``results.json`` exists), survives being killed and re-run (a cell's run resumes from its
checkpoint), and can be split across workers: each cell is claimed through an atomically
created claim file in the (shared) results folder, refreshed by a heartbeat, so two workers
never run the same cell; a claim whose heartbeat stopped (a killed worker) is taken over after
``--stale-after`` seconds.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import FIELDS, ConfigError, TrainConfig

GRID_KEYS = ("method", "dataset", "backbone", "fraction")


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
    return grid


def cells(grid: dict[str, Any]) -> list[Cell]:
    g = grid["grid"]
    values = [g.get("method", ["lora"]), g.get("dataset", ["imagefolder"]), g.get("backbone", [None]),
              g.get("fraction", [1.0])]
    return [Cell(m, d, b, float(f)) for m, d, b, f in itertools.product(*values)]


def cell_config(grid: dict[str, Any], cell: Cell, results_dir: Path) -> TrainConfig:
    values = copy.deepcopy(grid.get("base", {}))
    values.update(copy.deepcopy((grid.get("overrides") or {}).get(cell.method, {})))
    values.update(method=cell.method, dataset=cell.dataset, fraction=cell.fraction,
                  output_dir=str(results_dir / cell.key), seeds=list(grid.get("seeds", [0])))
    if cell.backbone:
        values["backbone"] = cell.backbone
    data_dirs = grid.get("data_dirs") or {}
    if cell.dataset in data_dirs:
        values["data_dir"] = str(data_dirs[cell.dataset])
    values.setdefault("cache_dir", str(results_dir / ".cache" / cell.dataset))
    return TrainConfig(**values).validate()


class Claim:
    """An atomically created claim file, kept fresh by a heartbeat thread while the cell runs."""

    def __init__(self, path: Path, worker: str, stale_after: float, heartbeat: float = 30.0):
        self.path, self.worker, self.stale_after, self.heartbeat = path, worker, stale_after, heartbeat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self._take_over_if_stale():
                    return False
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"worker": self.worker, "host": socket.gethostname(), "pid": os.getpid()}, f)
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
            return True
        return False

    def _take_over_if_stale(self) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return False
        if info.get("worker") == self.worker or age > self.stale_after:
            # Ours from a previous life, or its worker stopped beating: remove and retry the atomic create.
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            return True
        return False

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def run_cell(cfg: TrainConfig, hpo_trials: int) -> dict:
    from .. import run

    out = Path(cfg.output_dir)
    if hpo_trials > 0 and cfg.task == "classification":
        from .hpo import best_config, make_study, objective_for

        study_dir = out / "hpo"
        study_dir.mkdir(parents=True, exist_ok=True)
        base = copy.deepcopy(cfg)
        base.output_dir = str(study_dir)
        study = make_study("cell", f"sqlite:///{(study_dir / 'hpo.db').resolve()}", seed=0)
        remaining = hpo_trials - len([t for t in study.trials if t.state.is_finished()])
        if remaining > 0:
            study.optimize(objective_for(base, study_dir), n_trials=remaining)
        cfg = best_config(cfg, study)
    cfg.resume = (out / "config.yaml").exists()  # a killed cell continues from its checkpoints
    return run(cfg)


def run_grid(grid_path: str | Path, results_dir: str | Path, worker: str | None = None,
             stale_after: float = 900.0, max_cells: int | None = None) -> dict[str, int]:
    grid = load_grid(grid_path)
    results_dir = Path(results_dir)
    worker = worker or f"{socket.gethostname()}-{os.getpid()}"
    hpo_trials = int((grid.get("hpo") or {}).get("trials", 0))
    counts = {"done": 0, "ran": 0, "skipped_claimed": 0, "failed": 0}
    todo = cells(grid)
    for i, cell in enumerate(todo):
        cfg = cell_config(grid, cell, results_dir)
        out = Path(cfg.output_dir)
        if (out / "results.json").exists():
            counts["done"] += 1
            continue
        if max_cells is not None and counts["ran"] + counts["failed"] >= max_cells:
            break
        claim = Claim(results_dir / ".claims" / (cell.key.replace("/", "__") + ".claim"), worker, stale_after)
        if not claim.acquire():
            counts["skipped_claimed"] += 1
            continue
        try:
            if (out / "results.json").exists():  # finished by another worker in the meantime
                counts["done"] += 1
                continue
            print(f"[{worker}] cell {i + 1}/{len(todo)}: {cell.key}", flush=True)
            run_cell(cfg, hpo_trials)
            counts["ran"] += 1
        except Exception as e:  # one bad cell must not stop the sweep: record it, go on
            counts["failed"] += 1
            out.mkdir(parents=True, exist_ok=True)
            (out / "error.txt").write_text(f"{type(e).__name__}: {e}\n")
            print(f"[{worker}] cell {cell.key} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        finally:
            claim.release()
    print(f"[{worker}] {counts}")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.benchmark", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or continue) every cell of a grid")
    r.add_argument("grid")
    r.add_argument("--results-dir", required=True)
    r.add_argument("--worker-id", default=None)
    r.add_argument("--stale-after", type=float, default=900.0, help="seconds without heartbeat before a claim is "
                                                                    "taken over")
    r.add_argument("--max-cells", type=int, default=None)
    rep = sub.add_parser("report", help="tables (Markdown, CSV) beside the paper's numbers, and plots")
    rep.add_argument("results_dir")
    rep.add_argument("--out", default=None, help="where to write (default RESULTS_DIR/report)")
    args = p.parse_args(argv)
    try:
        if args.cmd == "run":
            counts = run_grid(args.grid, args.results_dir, args.worker_id, args.stale_after, args.max_cells)
            return 1 if counts["failed"] else 0
        from .report import write_report

        paths = write_report(args.results_dir, args.out)
        for path in paths:
            print(path)
        return 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
