"""Benchmark grids as the paper ran them, on optuna's storage.

    python -m trainer.benchmark run benchmarks/table2_resnet50.yaml --results-dir results/   # each worker
    python -m trainer.benchmark run GRID --results-dir results/ --storage postgresql://user@host/db
    python -m trainer.benchmark report results/            # Markdown + CSV tables, PNG plots, disk use

A grid file (YAML)::

    name: table2_resnet50
    base: {epochs: 50, patience: 10, batch_size: 64}     # TrainConfig defaults for every cell
    data_dirs: {ham10000: /data/HAM10000, breastus: /data/BUSI}
    grid:                                                 # the cross product is the set of cells
      method: [full, linear_probe, tsa, batchnorm, bias, ssf]
      dataset: [ham10000, breastus]
      backbone: [resnet50.a1_in1k]
      fraction: [1.0]
    seeds: [0, 1, 2]                  # the chosen configuration is retrained and tested once on each
    hpo: {trials: 20}                 # ASHA trials per cell (0: no search); optional min_resource,
                                      # reduction_factor, lr_ranges: {method: [lo, hi]}
    overrides:                        # per-method settings; what they set is not searched
      lora: {hparams: {rank: 8}}

The protocol per cell (method x backbone x dataset x fraction): an ASHA search over the method's
space (:func:`trainer.study.hpo.search_space`: log-uniform lr over the method family's range, weight
decay, the method's own hyper-parameters) for ``hpo.trials`` trials on the first seed, each
selected on validation; then the best configuration retrained on every seed (one fixed split),
each tested once; the cell's ``results.json`` holds mean +- std over the seeds, the chosen
hyper-parameters and the search's summary. Without search (``trials: 0``, and for generation,
whose loop has no validation score) the seeds run the grid's configuration; a learning rate the
grid does not set is the middle (geometric) of the method's range.

The engine is optuna's RDB storage (an SQLite file ``studies.db`` in the results folder by
default; ``--storage`` any SQLAlchemy URL, e.g. PostgreSQL, for many machines): each cell's search
is a study, its seed runs are trials queued with ``enqueue_trial`` in a second study, which
workers take atomically. Workers heartbeat while they train; a trial whose worker died is failed
and re-queued for the next worker, and a re-queued seed run resumes from its checkpoints. Start
as many workers as there are GPUs (``CUDA_VISIBLE_DEVICES=k``) or machines, at any time, all at
once if you like; each keeps taking work until every cell is finished. Trials and seed runs write
below the cell folder (``.search/trial_NNNN``, ``.seeds/seed_K``; hidden from the report). A
cell that failed (``error.txt``) stays failed: after fixing the cause, remove its studies
(``optuna delete-study --storage URL --study-name GRID/CELL/seeds``, ``.../search``) and run again.
"""
from __future__ import annotations

import copy
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any


from ..config import ConfigError, TrainConfig
from . import hpo
from .storage import GRACE_PERIOD, HEARTBEAT_INTERVAL, MAX_RETRY, StudyError, default_url, fail_stale_trials, \
    mark_alive, open_storage, open_study
from ..run_dir import RunDir
from .grid import Cell, cell_config, cell_space, cells, load_grid, search_trials
from .seeds import merge_seed_results, write_results

def _states():
    import optuna

    return optuna.trial.TrialState


def _in_budget(t) -> bool:
    """Counts towards a search's trials: all but surplus ones and those whose worker died (re-queued)."""
    if t.user_attrs.get("surplus"):
        return False
    return t.state != _states().FAIL or "error" in t.user_attrs


class Sweep:
    """One worker's view of a grid: finds the next piece of work (a search trial or a seed run) of
    the first unfinished cell that has one, runs it, and repeats until every cell is finished."""

    def __init__(self, grid_path, results_dir, worker: str | None = None, storage: str | None = None,
                 heartbeat: int = HEARTBEAT_INTERVAL, grace: int = GRACE_PERIOD, poll: float = 5.0,
                 sampler_seed: int = 0):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.grid = load_grid(grid_path)
        self.results_dir = Path(results_dir)
        self.worker = worker or f"{socket.gethostname()}-{os.getpid()}"
        self.storage = open_storage(storage or default_url(self.results_dir), heartbeat, grace)
        self.poll, self.sampler_seed = poll, sampler_seed
        self.cells = cells(self.grid)
        self._studies: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------- studies
    def _study(self, cell: Cell, kind: str, cfg: TrainConfig):
        name = f"{self.grid['name']}/{cell.key}/{kind}"
        if name not in self._studies:
            h = self.grid.get("hpo") or {}
            sampler, pruner = hpo.sampler_and_pruner(
                hpo.worker_seed(self.sampler_seed, f"{self.worker}:{name}"),
                h.get("min_resource") or hpo.first_rung(cfg.warmup_epochs), int(h.get("reduction_factor", 3)))
            if kind == "seeds":
                import optuna

                pruner = optuna.pruners.NopPruner()
            self._studies[name] = open_study(name, self.storage, "maximize", sampler, pruner)
        return self._studies[name]

    def _say(self, i: int, cell: Cell, what: str) -> None:
        print(f"[{self.worker}] cell {i + 1}/{len(self.cells)}: {cell.key} {what}", flush=True)

    # ------------------------------------------------------------------------------------ search
    def _search(self, i: int, cell: Cell, cfg: TrainConfig) -> tuple[str, dict]:
        """('ran' | 'wait' | 'failed' | 'finished', chosen params or {'error': ...})."""
        import optuna

        n = search_trials(self.grid, cfg)
        study = self._study(cell, "search", cfg)
        S = _states()
        trials = [t for t in study.get_trials(deepcopy=False) if _in_budget(t)]
        if any(t.state == S.RUNNING for t in trials):
            fail_stale_trials(study, self.storage)
            trials = [t for t in study.get_trials(deepcopy=False) if _in_budget(t)]
        if len(trials) < n or any(t.state == S.WAITING for t in trials):
            space = cell_space(self.grid, cell, cfg)
            base = copy.deepcopy(cfg)
            study_dir = Path(cfg.output_dir) / ".search"

            def objective(trial) -> float:
                mark_alive(self.storage, study, trial)
                before = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number and _in_budget(t)]
                if len(before) >= n:  # another worker took the last trial at the same moment
                    trial.set_user_attr("surplus", True)
                    raise optuna.TrialPruned("the search has all its trials")
                self._say(i, cell, f"search trial {len(before) + 1}/{n}")
                out = study_dir / f"trial_{trial.number:04d}"
                try:
                    cfg_t = hpo.apply_params(base, {k: hpo.suggest(trial, k, spec) for k, spec in space.items()})
                    cfg_t.seeds, cfg_t.output_dir = cfg_t.seeds[:1], str(out)
                    cfg_t.push_to_hub, cfg_t.resume, cfg_t.overwrite = None, False, True
                    return _search_run(trial, cfg_t)
                except optuna.TrialPruned:
                    raise
                except Exception as e:
                    trial.set_user_attr("error", f"{type(e).__name__}: {e}")
                    raise
                finally:  # a trial keeps its history and results, not its weights (the seeds retrain)
                    RunDir(out, base.seeds[:1]).drop_weights()

            study.optimize(objective, n_trials=1, catch=(Exception,))
            return "ran", {}
        if any(t.state == S.RUNNING for t in trials):
            return "wait", {}
        done = [t for t in trials if t.state == S.COMPLETE]
        if not done:
            errors = {t.user_attrs.get("error") for t in trials} - {None}
            return "failed", {"error": "no search trial completed" + (f" ({'; '.join(sorted(errors))})" if errors
                                                                        else "")}
        best = study.best_trial
        return "finished", {"params": dict(best.params), "trial": best.number, "val": best.value,
                            "complete": len(done), "pruned": sum(t.state == S.PRUNED for t in trials),
                            "trials": n, "study": study.study_name}

    # ------------------------------------------------------------------------------------- seeds
    def _seeds(self, i: int, cell: Cell, cfg: TrainConfig, search: dict | None) -> tuple[str, str]:
        """('ran' | 'wait' | 'failed' | 'done', message)."""
        import optuna

        study = self._study(cell, "seeds", cfg)
        S = _states()
        seeds = list(cfg.seeds)
        params = (search or {}).get("params", {})

        def status():
            trials = [t for t in study.get_trials(deepcopy=False) if "seed" in t.user_attrs
                      and not t.user_attrs.get("duplicate")]
            by = {s: [t for t in trials if t.user_attrs["seed"] == s] for s in seeds}
            return trials, by

        trials, by = status()
        if any(t.state == S.RUNNING for t in trials):
            fail_stale_trials(study, self.storage)
            trials, by = status()
        for s in seeds:
            ts = by[s]
            live = [t for t in ts if t.state in (S.WAITING, S.RUNNING, S.COMPLETE)]
            errors = [t.user_attrs["error"] for t in ts if t.state == S.FAIL and "error" in t.user_attrs]
            died = [t for t in ts if t.state == S.FAIL and "error" not in t.user_attrs]
            if live:
                continue
            if errors:
                return "failed", f"seed {s}: {errors[-1]}"
            if len(died) > MAX_RETRY:
                return "failed", f"seed {s}: its worker died {len(died)} times"
            study.enqueue_trial({}, user_attrs={"seed": s, "params": params})  # duplicates are dropped below
        trials, by = status()
        if all(any(t.state == S.COMPLETE for t in by[s]) for s in seeds):
            runs = [next(t for t in by[s] if t.state == S.COMPLETE).user_attrs["results"] for s in seeds]
            final = hpo.apply_params(cfg, params)
            merged = merge_seed_results(runs, [f".seeds/seed_{s}" for s in seeds])
            merged["chosen"] = {"lr": final.lr, "weight_decay": final.weight_decay, "hparams": dict(final.hparams)}
            merged["search"] = search
            write_results(Path(cfg.output_dir), merged)
            return "done", ""
        if not any(t.state == S.WAITING for t in trials):
            return "wait", ""
        base = hpo.apply_params(cfg, params)

        def objective(trial) -> float:
            mark_alive(self.storage, study, trial)
            seed = trial.user_attrs.get("seed")
            if seed is None:  # no queued run was left when this worker asked: not a seed run
                trial.set_user_attr("idle", True)
                raise optuna.TrialPruned("no queued seed run")
            earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number
                       and t.user_attrs.get("seed") == seed and not t.user_attrs.get("duplicate")
                       and t.state in (S.WAITING, S.RUNNING, S.COMPLETE)]
            if earlier:  # queued twice by two workers at the same moment: the earlier one counts
                trial.set_user_attr("duplicate", True)
                raise optuna.TrialPruned(f"seed {seed} is trial {earlier[0].number}")
            self._say(i, cell, f"seed {seed}")
            run_cfg = copy.deepcopy(base)
            run_cfg.seeds, run_cfg.output_dir = [seed], str(Path(cfg.output_dir) / ".seeds" / f"seed_{seed}")
            try:
                results = _seed_run(run_cfg)
            except Exception as e:
                trial.set_user_attr("error", f"{type(e).__name__}: {e}")
                raise
            trial.set_user_attr("results", json.loads(json.dumps(results, default=str)))
            test = (results.get("metrics") or {}).get("test") or {}
            value = (test.get(results.get("headline") or "fid") or {}).get("mean")
            return float(value) if isinstance(value, (int, float)) and value == value else 0.0

        study.optimize(objective, n_trials=1, catch=(Exception,))
        return "ran", ""

    # -------------------------------------------------------------------------------------- cells
    def step(self, i: int, cell: Cell) -> str:
        """Do at most one piece of work for the cell: 'ran', 'wait', 'done' or 'failed'."""
        cfg = cell_config(self.grid, cell, self.results_dir)
        out = Path(cfg.output_dir)
        if (out / "results.json").exists():
            return "done"
        search = None
        if cfg.task == "generation":  # NSGA-II over FID and memorization on validation, then seeds at the knee
            from .hpo_generation import cell_search

            search = cell_search(self.grid, cfg, self.storage, f"{self.grid['name']}/{cell.key}/pareto")
        if search_trials(self.grid, cfg) > 0:
            state, search = self._search(i, cell, cfg)
            if state == "failed":
                return self._failed(i, cell, out, search["error"])
            if state != "finished":
                return state
        state, message = self._seeds(i, cell, cfg, search)
        return self._failed(i, cell, out, message) if state == "failed" else state

    def _failed(self, i: int, cell: Cell, out: Path, message: str) -> str:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "error.txt").exists():
            (out / "error.txt").write_text(message + "\n")
            print(f"[{self.worker}] cell {i + 1}/{len(self.cells)}: {cell.key} failed: {message}", file=sys.stderr,
                  flush=True)
        return "failed"

    def run(self, max_trials: int | None = None) -> dict[str, int]:
        ran, final = 0, {}
        while True:
            for i, cell in enumerate(self.cells):
                if cell in final:
                    continue
                state = self.step(i, cell)
                if state == "ran":
                    ran += 1
                    break  # back to the first cell: cells finish in order
                if state in ("done", "failed"):
                    final[cell] = state
            else:
                if len(final) == len(self.cells):
                    break
                time.sleep(self.poll)  # the remaining work is running on other workers
                continue
            if max_trials is not None and ran >= max_trials:
                break
        counts = {"done": sum(s == "done" for s in final.values()), "ran": ran,
                  "failed": sum(s == "failed" for s in final.values()), "cells": len(self.cells)}
        print(f"[{self.worker}] {counts}", flush=True)
        return counts


def _search_run(trial, cfg: TrainConfig) -> float:
    import optuna

    from ..loops.classify import run

    def report(epoch: int, score: float) -> None:
        trial.report(score, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} (val {score:.4f})")

    results = run(cfg, report=report, search_trial=True)  # validation only: the test split is never seen
    return hpo.validation_objective(results)


def _seed_run(cfg: TrainConfig) -> dict:
    """One seed of the chosen configuration; a re-queued run continues from its checkpoints."""
    from .. import run

    out = Path(cfg.output_dir)
    done = RunDir(out, cfg.seeds)
    if done.finished:  # finished, but its worker died before recording it
        return done.read_results().data
    cfg.resume = (out / "config.yaml").exists()
    if cfg.resume:  # re-queued: the study's heartbeat found its worker dead, so its in-use mark is stale
        done.break_mark()
    return run(cfg)


def run_grid(grid_path: str | Path, results_dir: str | Path, worker: str | None = None,
             storage: str | None = None, heartbeat: int = HEARTBEAT_INTERVAL, grace: int = GRACE_PERIOD,
             max_trials: int | None = None, poll: float = 5.0) -> dict[str, int]:
    return Sweep(grid_path, results_dir, worker, storage, heartbeat, grace, poll).run(max_trials)


def check_args(args) -> None:
    """The numeric options, checked as the trainer's are (one line naming the flag), before any write."""
    from ..preflight import check_number, check_storage_url, check_writable

    if args.cmd == "run":
        check_number("--heartbeat", args.heartbeat, 1)
        check_number("--stale-after", args.stale_after, args.heartbeat + 1)
        check_number("--poll", args.poll, 0.01, 86_400, integer=False)
        if args.max_trials is not None:
            check_number("--max-trials", args.max_trials, 1)
        check_writable(args.results_dir, "--results-dir")
        check_storage_url(args.storage)
    elif args.out is not None:
        check_writable(args.out, "--out")


def main(argv: list[str] | None = None) -> int:
    from ..cli import Parser

    p = Parser(prog="python -m trainer.benchmark", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or continue) every cell of a grid; start one per GPU or machine")
    r.add_argument("grid")
    r.add_argument("--results-dir", required=True)
    r.add_argument("--storage", default=None, help="optuna storage URL shared by the workers, e.g. "
                                                   "postgresql://user@host/db (default: RESULTS_DIR/studies.db)")
    r.add_argument("--worker-id", default=None, help="a name in the log and the sampler's seed (default host-pid)")
    r.add_argument("--heartbeat", type=int, default=HEARTBEAT_INTERVAL, help="seconds between heartbeats")
    r.add_argument("--stale-after", type=int, default=GRACE_PERIOD,
                   help="seconds without a heartbeat before a worker counts as dead and its trial is re-queued")
    r.add_argument("--max-trials", "--max-cells", dest="max_trials", type=int, default=None,
                   help="stop after this many trials (search trials and seed runs)")
    r.add_argument("--poll", type=float, default=5.0, help="seconds between looks while others hold the work")
    rep = sub.add_parser("report", help="tables (Markdown, CSV) beside the paper's numbers, and plots")
    rep.add_argument("results_dir")
    rep.add_argument("--out", default=None, help="where to write (default RESULTS_DIR/report)")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        check_args(args)
        if args.cmd == "run":
            counts = run_grid(args.grid, args.results_dir, args.worker_id, args.storage, args.heartbeat,
                              args.stale_after, args.max_trials, args.poll)
            return 1 if counts["failed"] else 0
        from .disk_use import disk_use_lines
        from .report import NoResultsError, write_report

        try:
            paths = write_report(args.results_dir, args.out)
        except NoResultsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        for path in paths:
            print(path)
        print("\n".join(disk_use_lines(args.results_dir)))
        return 0
    except (ConfigError, StudyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a filesystem fault while writing (disk full, permission): one line
        from ..preflight import describe_storage_error

        message = describe_storage_error(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
