"""Hyper-parameter search with optuna and ASHA (asynchronous successive halving).

    python -m trainer.hpo --method lora --dataset ham10000 --data-dir DATA --trials 40 \
        --storage postgresql://user@host/db --study-name lora-ham

Each trial is an ordinary training run (one seed) that reports its validation headline metric
(macro-F1; AUROC for multi-label) after every epoch to optuna's ``SuccessiveHalvingPruner``,
which stops unpromising trials early. The first rung sits after the learning-rate warm-up
(epoch ``max(3, ceil(warmup_epochs) + 1)`` unless ``--min-resource`` says otherwise), so a
low-lr trial is not judged before it has started learning. The sampler (TPE with a constant
liar) is seeded from ``--sampler-seed`` and ``--worker-id``. Any optuna RDB URL as
``--storage`` lets many workers on many machines share one study: start the same command on
each, all at once if you like. A worker exits 0 when the study has a completed trial (its own
trials may all have been pruned) and writes the best configuration as ``best.yaml``, for
``python -m trainer --config best.yaml``.

A trial is scored on validation only: it never predicts the test split, and its folder
(``trial_NNNN/``: config, history, splits without the test split, validation predictions,
results.json of kind ``medpeft-search-trial``) holds no test score. The chosen configuration is
tested once, by the run of ``best.yaml``. Each tensor is kept once: a trial's resume checkpoint
goes when it ends (pruned, failed or finished), and only the study's best trial keeps its adapter.

Searched (:func:`search_space`): a log-uniform learning rate over the method family's range
(:data:`LR_RANGES`), a log-uniform weight decay, and the method's own hyper-parameters (those in
its registry defaults that :data:`SEARCH_SPACE` knows: LoRA rank/alpha, AdaptFormer bottleneck
and scale, VPT prompt count).
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from ..cli import parse_config
from ..config import ConfigError, TrainConfig
from .method_space import method_space
from ..run_dir import RunDir

# Method hyper-parameter name -> (kind, args): "log" float range, "cat" choices.
SEARCH_SPACE: dict[str, tuple[str, Any]] = {
    "rank": ("cat", [4, 8, 16, 32]),
    "alpha": ("cat", [4, 8, 16, 32]),
    "bottleneck": ("cat", [8, 16, 32, 64, 128]),
    "scale": ("log", (0.01, 1.0)),
    "num_prompts": ("cat", [1, 5, 10, 20, 50]),
}
WEIGHT_DECAY = (1e-6, 1e-1)
# task -> method -> log-uniform learning-rate range; "*" is every other method of the task. Full
# fine-tuning moves every weight and wants a small step; a PEFT method trains few, freshly
# initialised parameters and wants a larger one. On the U-Net, methods that train whole attention
# layers (any name with "attention") or LoRA sit between the two.
LR_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "classification": {"full": (1e-5, 1e-3), "*": (1e-4, 1e-2)},
    "generation": {"full": (1e-6, 1e-4), "lora": (1e-5, 1e-3), "attention": (1e-5, 1e-3), "*": (1e-4, 1e-2)},
}
DEFAULT_MIN_RESOURCE = 3


def lr_range(task: str, method: str) -> tuple[float, float]:
    table = LR_RANGES.get(task, LR_RANGES["classification"])
    if method in table:
        return table[method]
    if task == "generation" and "attention" in method:
        return table["attention"]
    return table["*"]


def default_lr(task: str, method: str) -> float:
    """The geometric middle of the method's range: the learning rate of a grid cell without search."""
    lo, hi = lr_range(task, method)
    return float(f"{math.sqrt(lo * hi):.3g}")


def search_space(task: str, method: str, hparams: Iterable[str] = (), fixed: Iterable[str] = ()) -> dict:
    """Name -> (kind, args) of everything searched for ``method``; names in ``fixed`` are left as set."""
    space: dict[str, tuple[str, Any]] = {"lr": ("log", lr_range(task, method)), "weight_decay": ("log", WEIGHT_DECAY)}
    space.update({k: SEARCH_SPACE[k] for k in hparams if k in SEARCH_SPACE})
    space.update(method_space(method, hparams))  # the catalogue's per-method dimensions (study/method_space.py)
    fixed = set(fixed)
    return {k: v for k, v in space.items() if k not in fixed}


def first_rung(warmup_epochs: float) -> int:
    """ASHA's first rung: the first epoch after the warm-up, and not before epoch 3."""
    return max(DEFAULT_MIN_RESOURCE, math.ceil(warmup_epochs) + 1)


def suggest(trial, name: str, spec: tuple[str, Any]):
    kind, args = spec
    if kind == "log":
        return trial.suggest_float(name, *args, log=True)
    return trial.suggest_categorical(name, args)


def apply_params(base: TrainConfig, params: dict) -> TrainConfig:
    """A copy of ``base`` with searched values (lr, weight_decay, method hyper-parameters) set."""
    cfg = copy.deepcopy(base)
    cfg.lr = params.get("lr", cfg.lr)
    cfg.weight_decay = params.get("weight_decay", cfg.weight_decay)
    cfg.hparams = {**cfg.hparams, **{k: v for k, v in params.items() if k in cfg.hparams}}
    return cfg


def trial_config(base: TrainConfig, trial, study_dir: Path, fixed: Iterable[str] = ()) -> TrainConfig:
    space = search_space(base.task, base.method, base.hparams, fixed)
    cfg = apply_params(base, {name: suggest(trial, name, spec) for name, spec in space.items()})
    cfg.seeds = cfg.seeds[:1]
    cfg.output_dir = str(Path(study_dir) / f"trial_{trial.number:04d}")
    cfg.push_to_hub = None
    cfg.resume, cfg.overwrite = False, True
    return cfg


OBJECTIVES = ("headline", "worst_group")


def validation_objective(results: dict) -> float:
    """What a search maximises, from a run's results.json: the validation headline (mean over its
    seeds), or for a run selected on ``worst_group`` (FairTune) its worst subgroup's validation score."""
    if results.get("selected_on") == "worst_group":
        worst = (((results.get("fairness") or {}).get("val") or {}).get("worst_group_score") or {}).get("mean")
        return float(worst) if worst is not None else float("-inf")
    return results["metrics"]["val"][results["headline"]]["mean"]


def objective_for(base: TrainConfig, study_dir: Path, train: Callable | None = None, fixed: Iterable[str] = (),
                  search_trial: bool = True):
    """The optuna objective: one training run per trial, scored on validation. ``search_trial`` (default)
    runs each trial on validation only (``train(cfg, report=..., search_trial=True)``); False calls
    ``train(cfg, report=...)`` for a caller that keeps a trial as its final run (the app's quick HPO)."""
    import optuna

    from ..loops.classify import run

    train = train or run
    fixed = tuple(fixed)

    def objective(trial) -> float:
        cfg = trial_config(base, trial, study_dir, fixed)

        def report(epoch: int, score: float) -> None:
            trial.report(score, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} (val {score:.4f})")

        try:
            results = train(cfg, report=report, **({"search_trial": True} if search_trial else {}))
        finally:
            RunDir(cfg.output_dir, cfg.seeds).drop_checkpoints()  # pruned or failed trials too
        trial.set_user_attr("output_dir", cfg.output_dir)
        return validation_objective(results)

    return objective


def keep_best_adapter(study_dir: Path):
    """An optuna callback: after each trial, only the study's best trial keeps its adapter folder. Only
    finished trials are touched: a trial another worker is still running keeps its folder until it ends."""

    def callback(study, _trial) -> None:
        import optuna

        try:
            best = study.best_trial.number
        except ValueError:  # no completed trial yet
            return
        states = optuna.trial.TrialState
        finished = study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED, states.FAIL))
        for t in finished:
            if t.number != best:
                for adapter in (Path(study_dir) / f"trial_{t.number:04d}").glob("seed_*/adapter"):
                    shutil.rmtree(adapter, ignore_errors=True)

    return callback


def worker_seed(sampler_seed: int, worker: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{sampler_seed}:{worker}".encode()).digest()[:4], "little")


def sampler_and_pruner(seed: int, min_resource: int | None = None, reduction_factor: int = 3):
    import optuna

    return (optuna.samplers.TPESampler(seed=seed, constant_liar=True),
            optuna.pruners.SuccessiveHalvingPruner(min_resource=min_resource or DEFAULT_MIN_RESOURCE,
                                                   reduction_factor=reduction_factor))


def make_study(study_name: str, storage, seed: int, min_resource: int | None = None, reduction_factor: int = 3):
    """An ASHA study; ``storage`` None keeps it in memory, a URL or storage object shares it (created
    by whichever worker comes first, also when several start at the same instant)."""
    from .storage import open_storage, open_study

    if isinstance(storage, str):
        storage = open_storage(storage)
    sampler, pruner = sampler_and_pruner(seed, min_resource, reduction_factor)
    return open_study(study_name, storage, "maximize", sampler, pruner)


def best_config(base: TrainConfig, study) -> TrainConfig:
    return apply_params(base, study.best_trial.params)


def main(argv: list[str] | None = None) -> int:
    import optuna

    from ..__main__ import user_errors
    from ..cli import Parser
    from ..preflight import check_number, check_storage_url, describe_storage_error, preflight
    from .storage import StudyError

    p = Parser(prog="python -m trainer.hpo", description=__doc__.split("\n\n")[0],
               epilog="All other flags are the trainer's (python -m trainer --help).")
    p.add_argument("--trials", type=int, default=20, help="trials this worker runs")
    p.add_argument("--storage", default=None, help="optuna storage URL, e.g. postgresql://user@host/db "
                                                   "(default: sqlite in the study folder)")
    p.add_argument("--study-name", default=None)
    p.add_argument("--sampler-seed", type=int, default=0)
    p.add_argument("--worker-id", default=None,
                   help="distinguishes workers sharing a study (default: host and pid); the sampler is seeded "
                        "from --sampler-seed and this, so a fixed id gives a reproducible worker and two workers "
                        "never propose the same sequence")
    p.add_argument("--min-resource", type=int, default=None,
                   help="ASHA: epoch of the first rung (default: the first epoch after the warm-up, at least 3)")
    p.add_argument("--reduction-factor", type=int, default=3, help="ASHA: keep 1/eta per rung")
    p.add_argument("--objective", choices=OBJECTIVES, default="headline",
                   help="what the search maximises on validation: the headline score, or worst_group, the "
                        "lowest-scoring patient subgroup (FairTune; epochs are then selected on it too)")
    try:
        args, rest = p.parse_known_args(argv)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except ConfigError as e:  # a bad value of one of these flags: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        check_number("--trials", args.trials, 1)
        check_number("--sampler-seed", args.sampler_seed, 0, 2**32 - 1)
        if args.min_resource is not None:
            check_number("--min-resource", args.min_resource, 1)
        check_number("--reduction-factor", args.reduction_factor, 2)
        base = preflight(parse_config(rest + (["--select-on", args.objective] if args.objective != "headline" else [])))
        study_dir = Path(base.output_dir)
        url = args.storage or f"sqlite:///{(study_dir / 'hpo.db').resolve()}"
        check_storage_url(url)  # nothing is written before every check passed
        study_dir.mkdir(parents=True, exist_ok=True)
        name = args.study_name or f"{base.method}-{base.dataset}"
        worker = args.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        study = make_study(name, url, worker_seed(args.sampler_seed, worker),
                           args.min_resource or first_rung(base.warmup_epochs), args.reduction_factor)
        study.optimize(objective_for(base, study_dir), n_trials=args.trials, catch=(),
                       callbacks=[keep_best_adapter(study_dir)])
    except user_errors() + (StudyError,) as e:
        print(f"error: {str(e).strip()}", file=sys.stderr)
        return 2
    except Exception as e:  # a filesystem fault while writing (disk full, permission): one line
        message = describe_storage_error(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    states = optuna.trial.TrialState
    done = study.get_trials(deepcopy=False, states=(states.COMPLETE,))
    if not done:  # the study's state, not this worker's: another worker may still complete one
        print(f"study {name}: no trial completed yet", file=sys.stderr)
        return 1
    best = best_config(base, study)
    best.output_dir = str(study_dir / "best_run")
    out = study_dir / "best.yaml"
    tmp = out.with_name(f".best.{os.getpid()}.tmp")  # several workers may write it at once
    tmp.write_text(yaml.safe_dump(best.to_dict(), sort_keys=False))
    os.replace(tmp, out)
    pruned = len(study.get_trials(deepcopy=False, states=(states.PRUNED,)))
    print(f"study {name}: {len(done)} complete, {pruned} pruned; best val {study.best_value:.4f} "
          f"with {study.best_trial.params}\nbest configuration: {out}  (python -m trainer --config {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
