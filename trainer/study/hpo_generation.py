"""Memorization-aware search for text-to-image fine-tuning (after MemControl, Dutt et al., WACV 2025):
optuna's multi-objective NSGA-II over the learning rate and the method's hyper-parameters, scored on the
validation split, writing the Pareto front.

    python -m trainer.hpo --task generation --objectives fid,memorization --method lora --dataset mimic_cxr \\
        --data-dir DATA --base-model runwayml/stable-diffusion-v1-5 --fid-samples 200 --val-frac 0.05 --trials 24

Each trial is an ordinary generation run (one seed, :func:`trainer.loops.generate.run`) whose samples for
the validation prompts are judged by :mod:`trainer.geneval` (never the test split). Objectives
(:data:`DIRECTIONS`): ``fid``, ``kid``, ``memorization`` (fraction of samples flagged as near-copies of
training images), ``ms_ssim`` (lower = more diverse), ``nn_pixel_distance`` and ``noise_norm`` (Wen et
al.'s score on training prompts) are minimised; ``precision``, ``recall``, ``density``, ``coverage``
maximised. Written to the output folder: ``pareto.json`` (every trial and the front), ``pareto.csv``,
``pareto.png`` (the first two objectives, the front joined) and ``front/trial_XXXX.yaml`` (each front
configuration, for ``python -m trainer --config``). The configuration a grid keeps is the front's knee:
the point nearest the ideal after scaling each objective to [0, 1] over the front.

MemControl also searches which U-Net blocks to fine-tune (a block mask); here the method's own
hyper-parameters are searched (:func:`trainer.study.hpo.search_space`), and methods are compared by grid.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import yaml

from ..cli import parse_config
from ..config import ConfigError, TrainConfig
from . import hpo

DIRECTIONS = {"fid": "minimize", "kid": "minimize", "memorization": "minimize", "ms_ssim": "minimize",
              "nn_pixel_distance": "maximize", "noise_norm": "minimize", "precision": "maximize",
              "recall": "maximize", "density": "maximize", "coverage": "maximize"}
DEFAULT_OBJECTIVES = ("fid", "memorization")


def wants(argv) -> bool:
    """Whether a ``python -m trainer.hpo`` command line asks for this search."""
    argv = list(argv or [])
    return "--objectives" in argv or any(a.startswith("--objectives=") for a in argv) or \
        any(a == "--task" and i + 1 < len(argv) and argv[i + 1] == "generation" for i, a in enumerate(argv)) or \
        "--task=generation" in argv


def parse_objectives(text: str) -> list[str]:
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    bad = [n for n in names if n not in DIRECTIONS]
    if bad or not names:
        raise ConfigError(f"unknown objective(s) {bad or text!r}; choose from {', '.join(DIRECTIONS)}")
    return names


def objective_values(results: dict, objectives: list[str]) -> tuple[float, ...]:
    """The validation scores a trial returns, from a generation run's results."""
    val = (results.get("metrics") or {}).get("val")
    if not val:
        raise ConfigError("the search needs a validation split with scores: set --val-frac (e.g. 0.1) or a "
                          "'val' split in the CSV, and --fid-samples >= 2")
    out = []
    for name in objectives:
        if name == "noise_norm":
            nn = (results.get("per_seed") or [{}])[0].get("noise_norm") or {}
            value = nn.get("train")
        else:
            value = (val.get(name) or {}).get("mean")
        if value is None:
            raise ConfigError(f"objective {name!r} was not measured on the validation split (precision/recall "
                              f"need more than 5 images per side: raise --fid-samples)")
        out.append(float(value))
    return tuple(out)


def prepare(base: TrainConfig) -> TrainConfig:
    if base.task != "generation":
        raise ConfigError("--objectives searches text-to-image runs: add --task generation")
    if base.fid_samples < 2:
        raise ConfigError("the search scores generated images: set --fid-samples (at least 2; 100+ for real use)")
    if base.val_frac is None and "val_frac" not in base.dataset_options:
        base.val_frac = 0.1  # a validation split is required; the test split is never searched on
    return base


def generation_fixed(base: TrainConfig, fixed=()) -> set[str]:
    """Names left as set: the caller's, and the catalogue's classification-only dimensions (LoRA init,
    rsLoRA, ...: the U-Net searches lr, weight decay and the method's size/scale hyper-parameters)."""
    keep = {"lr", "weight_decay", *hpo.SEARCH_SPACE}
    return set(fixed) | {k for k in hpo.search_space(base.task, base.method, base.hparams) if k not in keep}


def make_objective(base: TrainConfig, study_dir: Path, objectives: list[str], fixed=(), run=None):
    fixed = generation_fixed(base, fixed)

    def objective(trial):
        from ..loops.generate import run as generate

        cfg = hpo.trial_config(base, trial, study_dir, fixed)
        results = (run or generate)(cfg, search_trial=True)  # validation only: the test split is never seen
        trial.set_user_attr("output_dir", cfg.output_dir)
        return objective_values(results, objectives)

    return objective


def create_study(name: str, storage, objectives: list[str], seed: int, population: int = 8):
    import optuna

    sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    return optuna.create_study(study_name=name, storage=storage, sampler=sampler, load_if_exists=True,
                               directions=[DIRECTIONS[o] for o in objectives])


def knee(front: list, objectives: list[str]):
    """The front trial nearest the ideal point, each objective scaled to [0, 1] over the front."""
    if len(front) == 1:
        return front[0]
    cols = list(zip(*[t.values for t in front]))
    scaled = []
    for o, col in zip(objectives, cols):
        lo, hi = min(col), max(col)
        span = (hi - lo) or 1.0
        scaled.append([((v - lo) if DIRECTIONS[o] == "minimize" else (hi - v)) / span for v in col])
    dist = [sum(s[i] ** 2 for s in scaled) for i in range(len(front))]
    return front[dist.index(min(dist))]


def write_front(study, base: TrainConfig, objectives: list[str], out: Path) -> dict:
    """pareto.json, pareto.csv, pareto.png and front/trial_XXXX.yaml in ``out``; returns the summary."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    front = study.best_trials
    chosen = knee(front, objectives) if front else None
    rows = [{"trial": t.number, "pareto": t.number in {f.number for f in front}, "params": t.params,
             **dict(zip(objectives, t.values)),
             "output_dir": t.user_attrs.get("output_dir")} for t in done]
    summary = {"objectives": {o: DIRECTIONS[o] for o in objectives}, "trials": rows,
               "front": [r["trial"] for r in rows if r["pareto"]], "knee": chosen.number if chosen else None,
               "params": dict(chosen.params) if chosen else {}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "pareto.json").write_text(json.dumps(summary, indent=2, default=str))
    with open(out / "pareto.csv", "w", newline="") as f:
        w = csv.writer(f)
        keys = sorted({k for r in rows for k in r["params"]})
        w.writerow(["trial", "pareto", *objectives, *keys])
        for r in rows:
            w.writerow([r["trial"], r["pareto"], *[r[o] for o in objectives], *[r["params"].get(k) for k in keys]])
    for t in front:
        cfg = hpo.apply_params(base, t.params)
        cfg.output_dir = str(out / "front" / f"run_{t.number:04d}")
        (out / "front").mkdir(exist_ok=True)
        (out / "front" / f"trial_{t.number:04d}.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if len(objectives) >= 2 and rows:
        from .report_generation import front_plot

        front_plot([(r[objectives[0]], r[objectives[1]], r["pareto"], f"#{r['trial']}") for r in rows],
                   objectives[0], objectives[1], out / "pareto.png", title="validation Pareto front (NSGA-II)")
    return summary


def cell_search(grid: dict, cfg: TrainConfig, storage, name: str, seed: int = 0) -> dict | None:
    """A benchmark grid cell's search (``hpo: {trials: N, objectives: fid,memorization}``): run what is
    left of its N trials, write its front under ``<cell>/.search/``, and return the knee's parameters."""
    import copy

    import optuna

    h = grid.get("hpo") or {}
    n = int(h.get("trials", 0) or 0)
    if cfg.task != "generation" or n <= 0:
        return None
    objectives = parse_objectives(h.get("objectives", ",".join(DEFAULT_OBJECTIVES)))
    base = prepare(copy.deepcopy(cfg))
    study_dir = Path(cfg.output_dir) / ".search"
    study = create_study(name, storage, objectives, seed, int(h.get("population", 8)))
    left = n - len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if left > 0:
        study.optimize(make_objective(base, study_dir, objectives), n_trials=left, catch=(Exception,))
    summary = write_front(study, base, objectives, study_dir)
    return {"params": summary["params"], "knee": summary["knee"], "front": summary["front"],
            "objectives": objectives, "trials": n, "study": name}


def main(argv: list[str] | None = None) -> int:
    from ..__main__ import user_errors
    from ..preflight import preflight
    from .storage import StudyError, open_storage

    p = argparse.ArgumentParser(prog="python -m trainer.hpo --task generation", description=__doc__.split("\n\n")[0],
                                epilog="All other flags are the trainer's (python -m trainer --help).")
    p.add_argument("--objectives", default=",".join(DEFAULT_OBJECTIVES),
                   help=f"comma-separated, from {', '.join(DIRECTIONS)} (default: fid,memorization)")
    p.add_argument("--trials", type=int, default=16, help="trials this worker runs")
    p.add_argument("--population", type=int, default=8, help="NSGA-II population size")
    p.add_argument("--storage", default=None, help="optuna storage URL (default: sqlite in the output folder)")
    p.add_argument("--study-name", default=None)
    p.add_argument("--sampler-seed", type=int, default=0)
    args, rest = p.parse_known_args(argv)
    try:
        objectives = parse_objectives(args.objectives)
        base = preflight(prepare(parse_config(rest)))
        study_dir = Path(base.output_dir)
        study_dir.mkdir(parents=True, exist_ok=True)
        name = args.study_name or f"{base.method}-{base.dataset}-generation"
        storage = open_storage(args.storage or f"sqlite:///{(study_dir / 'hpo.db').resolve()}")
        study = create_study(name, storage, objectives, args.sampler_seed, args.population)
        study.optimize(make_objective(base, study_dir, objectives), n_trials=args.trials, catch=())
        summary = write_front(study, base, objectives, study_dir)
    except user_errors() + (StudyError,) as e:
        print(f"error: {str(e).strip()}", file=sys.stderr)
        return 2
    if not summary["trials"]:
        print(f"study {name}: no trial completed yet", file=sys.stderr)
        return 1
    print(f"study {name}: {len(summary['trials'])} complete; Pareto front (validation {', '.join(objectives)}): "
          f"trials {summary['front']}; knee: trial {summary['knee']} {summary['params']}\n"
          f"front: {study_dir / 'pareto.json'}, {study_dir / 'pareto.png'}, {study_dir / 'front'}/")
    return 0


if __name__ == "__main__":
    sys.exit(main(os.sys.argv[1:]))
