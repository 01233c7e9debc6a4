"""Hyper-parameter search with optuna and ASHA (asynchronous successive halving).

    python -m trainer.hpo --method lora --dataset ham10000 --data-dir DATA --trials 40 \
        --storage postgresql://user@host/db --study-name lora-ham

Each trial is an ordinary training run (one seed) that reports its validation headline metric
(macro-F1; AUROC for multi-label) after every epoch to optuna's ``SuccessiveHalvingPruner``,
which stops unpromising trials early. The sampler (TPE) is seeded from ``--sampler-seed`` and
``--worker-id``. Any optuna RDB URL as
``--storage`` lets many workers on many machines share one study: start the same command on
each. The best configuration is written as ``best.yaml``, for ``python -m trainer --config best.yaml``.

Searched: learning rate, weight decay, and the method's own hyper-parameters found in
:data:`SEARCH_SPACE` (e.g. LoRA rank/alpha, AdaptFormer bottleneck, VPT prompt count).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import os
import socket
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from ..config import ConfigError, TrainConfig, parse_config

# name -> (kind, args): "log" float range, "cat" choices
SEARCH_SPACE: dict[str, tuple[str, Any]] = {
    "lr": ("log", (1e-5, 3e-2)),
    "weight_decay": ("log", (1e-6, 1e-1)),
    "rank": ("cat", [4, 8, 16, 32]),
    "alpha": ("cat", [4, 8, 16, 32]),
    "bottleneck": ("cat", [8, 16, 32, 64, 128]),
    "scale": ("log", (0.01, 1.0)),
    "num_prompts": ("cat", [1, 5, 10, 20, 50]),
}


def suggest(trial, name: str):
    kind, args = SEARCH_SPACE[name]
    if kind == "log":
        return trial.suggest_float(name, *args, log=True)
    return trial.suggest_categorical(name, args)


def trial_config(base: TrainConfig, trial, study_dir: Path) -> TrainConfig:
    cfg = copy.deepcopy(base)
    cfg.lr = suggest(trial, "lr")
    cfg.weight_decay = suggest(trial, "weight_decay")
    cfg.hparams = {**cfg.hparams, **{k: suggest(trial, k) for k in cfg.hparams if k in SEARCH_SPACE}}
    cfg.seeds = cfg.seeds[:1]
    cfg.output_dir = str(study_dir / f"trial_{trial.number:04d}")
    cfg.cache_dir = cfg.cache_dir or str(study_dir / ".cache")  # decoded images shared by every trial
    cfg.push_to_hub = None
    cfg.resume, cfg.overwrite = False, True
    return cfg


def objective_for(base: TrainConfig, study_dir: Path, train: Callable | None = None):
    import optuna

    from ..loops.classify import run

    train = train or run

    def objective(trial) -> float:
        cfg = trial_config(base, trial, study_dir)

        def report(epoch: int, score: float) -> None:
            trial.report(score, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} (val {score:.4f})")

        results = train(cfg, report=report)
        val = results["metrics"]["val"][results["headline"]]["mean"]
        trial.set_user_attr("output_dir", cfg.output_dir)
        trial.set_user_attr("test", results["metrics"]["test"][results["headline"]]["mean"])
        return val

    return objective


def make_study(study_name: str, storage: str, seed: int, min_resource: int = 1, reduction_factor: int = 3):
    import optuna

    return optuna.create_study(
        study_name=study_name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource, reduction_factor=reduction_factor))


def best_config(base: TrainConfig, study) -> TrainConfig:
    best = study.best_trial
    cfg = copy.deepcopy(base)
    cfg.lr = best.params.get("lr", cfg.lr)
    cfg.weight_decay = best.params.get("weight_decay", cfg.weight_decay)
    cfg.hparams = {**cfg.hparams, **{k: v for k, v in best.params.items() if k in cfg.hparams}}
    return cfg


def main(argv: list[str] | None = None) -> int:
    import optuna

    p = argparse.ArgumentParser(prog="python -m trainer.hpo", description=__doc__.split("\n\n")[0],
                                epilog="All other flags are the trainer's (python -m trainer --help).")
    p.add_argument("--trials", type=int, default=20, help="trials this worker runs")
    p.add_argument("--storage", default=None, help="optuna storage URL (default: sqlite in the study folder)")
    p.add_argument("--study-name", default=None)
    p.add_argument("--sampler-seed", type=int, default=0)
    p.add_argument("--worker-id", default=None,
                   help="distinguishes workers sharing a study (default: host and pid); the sampler is seeded "
                        "from --sampler-seed and this, so a fixed id gives a reproducible worker and two workers "
                        "never propose the same sequence")
    p.add_argument("--min-resource", type=int, default=1, help="ASHA: epochs before the first rung")
    p.add_argument("--reduction-factor", type=int, default=3, help="ASHA: keep 1/eta per rung")
    args, rest = p.parse_known_args(argv)
    try:
        base = parse_config(rest)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    study_dir = Path(base.output_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    name = args.study_name or f"{base.method}-{base.dataset}"
    storage = args.storage or f"sqlite:///{(study_dir / 'hpo.db').resolve()}"
    if storage.startswith("sqlite"):  # several local workers: wait on the lock instead of failing
        storage = optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": {"timeout": 60}})
    worker = args.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    seed = int.from_bytes(hashlib.sha256(f"{args.sampler_seed}:{worker}".encode()).digest()[:4], "little")
    study = make_study(name, storage, seed, args.min_resource, args.reduction_factor)
    study.optimize(objective_for(base, study_dir), n_trials=args.trials, catch=())
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        print("no trial completed", file=sys.stderr)
        return 1
    best = best_config(base, study)
    best.output_dir = str(study_dir / "best_run")
    out = study_dir / "best.yaml"
    out.write_text(yaml.safe_dump(best.to_dict(), sort_keys=False))
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    print(f"study {name}: {len(done)} complete, {pruned} pruned; best val {study.best_value:.4f} "
          f"with {study.best_trial.params}\nbest configuration: {out}  (python -m trainer --config {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
