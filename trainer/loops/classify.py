"""The one classification training loop (every method, every backbone), through accelerate.

Protocol (Dutt et al. 2024): train on the train split, select the epoch with the best validation
macro-F1 (AUROC for multi-label) with early stopping, test that checkpoint once. The test split is
never used for selection. Several seeds give mean +- std.

The output folder (config.yaml, seed_<k>/{splits.json, history.json, predictions.csv, checkpoint/,
adapter/}, results.json written last) is laid out by :class:`trainer.run_dir.RunDir`; the resume
checkpoints go once the run is finished (unless --keep-checkpoints). An HPO trial (``search_trial``)
is scored on validation only: the test split is never predicted. The optimizer, schedule and step
are :mod:`trainer.loops.optim`'s.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from adapters import apply_method, count_params, create_backbone, data_config
from adapters.io import AdapterConfig, save_adapter
from adapters.methods.lora_init import init_batches

from .checkpoint import epoch_seed, load_checkpoint, rng_state, save_best, save_checkpoint, set_rng_state
from ..config import ConfigError, TrainConfig
from ..data.transforms import cache_size_for
from ..run_dir import RunDir, RunExistsError, RunResults
from .optim import build_optimizer, build_scheduler, make_accelerator, resolve_total_steps, train_step
from .precision import config_runtime, loader_options, model_runtime, prepare_model
from .assess import adapter_metrics, aggregate_assessments, assess_seed, card_calibration, evaluate, predict, \
    selection_score, worst_group_score, assessment_lines
from .metrics import aggregate, classification_metrics, headline, loss_for, undefined_notes
from .predictions import write_predictions

ReportFn = Callable[[int, float], None]  # (epoch, validation headline) -> may raise optuna.TrialPruned
ProgressFn = Callable[[dict], None]  # live events for a UI: {"kind": "epoch" | "step", ...}


__all__ = ["RunExistsError", "run", "train_seed", "build_loaders", "evaluate", "load_data", "model_data_config",
           "summarise", "format_summary"]


def load_data(cfg: TrainConfig):
    from ..data import dataset_parameters, load_dataset

    if cfg.data_dir is None:
        raise ConfigError(f"--data-dir is required for dataset {cfg.dataset!r}")
    options = dict(cfg.dataset_options)
    for key in ("group_columns", "age_bins"):  # subgroup flags, for the loaders that take them
        if getattr(cfg, key) is not None:
            if key not in dataset_parameters(cfg.dataset):
                raise ConfigError(f"--{key.replace('_', '-')}: dataset {cfg.dataset!r} has no such subgroups")
            options[key] = getattr(cfg, key)
    index = load_dataset(cfg.dataset, cfg.data_dir, **options)
    if cfg.select_on == "worst_group" and not index.subgroups:
        raise ConfigError(f"--select-on worst_group needs subgroups, and {index.name} carries none here "
                          f"(csv / imagefolder: name metadata columns with --group-columns)")
    return index


def model_data_config(model: nn.Module, cfg: TrainConfig) -> dict:
    """The model's timm preprocessing plus the cache's resize ("pre_resize", trainer/data/transforms.py)."""
    from ..data.transforms import PRE_RESIZE, pre_resize_config

    dcfg = data_config(model)
    if cfg.img_size:
        dcfg["input_size"] = [3, cfg.img_size, cfg.img_size]
    if cfg.normalization:  # e.g. MED-PEFT's MRM / CXR-MAE statistics
        from adapters.checkpoints import normalization

        dcfg["mean"], dcfg["std"] = normalization(cfg.normalization)
    if cfg.mean is not None:
        dcfg["mean"], dcfg["std"] = [float(cfg.mean)] * 3, [float(cfg.std)] * 3
    dcfg[PRE_RESIZE] = pre_resize_config(dcfg)
    return dcfg


def run(cfg: TrainConfig, report: ReportFn | None = None, progress: ProgressFn | None = None,
        stop: threading.Event | None = None, search_trial: bool = False) -> dict:
    """Train every seed, write results.json, save (and push) the adapter. Returns the results dict.

    ``report(epoch, val)`` feeds HPO pruning; ``progress(event)`` receives live step/epoch events;
    setting ``stop`` ends training after the current step: the best validation checkpoint so far is
    tested and saved as usual (and the results say ``stopped_early_by_user``). ``search_trial``: an
    HPO trial, evaluated on validation only (no test predictions, metrics or assessment)."""
    from ..data import build_image_cache
    from ..data.cache import image_cache_dir

    cfg.validate()
    RunDir.check_can_start(cfg)
    rt = config_runtime(cfg)  # precision, memory format, fused AdamW, ... (trainer/loops/precision.py)
    accelerator = make_accelerator(rt.precision, non_blocking=rt.non_blocking)
    t0 = time.time()
    # The data is read, decoded and split once before anything is written in the run folder: a bad
    # layout, an unreadable image or a split that leaves a class empty fails with nothing left behind.
    index = load_data(cfg)
    backbone = cfg.resolved_backbone()
    with torch.device("meta"):  # only the preprocessing config is needed: no weights allocated
        probe = create_backbone(backbone, len(index.class_names), pretrained=False, img_size=cfg.img_size,
                                init_checkpoint=cfg.init_checkpoint)  # a preset's repo copy: its config only
    dcfg = model_data_config(probe, cfg)
    cache_dir = image_cache_dir(cfg.cache_dir)  # MEDPEFT_CACHE_DIR, never beside the run folder
    with accelerator.main_process_first():
        cache = build_image_cache(index, cache_dir, cache_size_for(dcfg), workers=max(1, rt.num_workers),
                                  skip_bad=cfg.skip_bad_images, progress=accelerator.is_main_process)
    index = cache.index
    listed = None
    if cfg.split_lists:  # MED-PEFT's official lists: exactly the listed images (and, by default, their labels)
        from ..data.split_lists import splits_from_lists

        index, listed, list_report = splits_from_lists(index, cfg.split_lists, cfg.label_fraction, cfg.labels_from)
        index.notes = list(getattr(index, "notes", [])) + [list_report.summary()]
        accelerator.print(list_report.summary())
    else:
        check_splits(cfg, index)
    run_dir = RunDir.prepare(cfg)  # and marks the folder in use by this process until the run ends
    try:
        if accelerator.is_main_process:
            run_dir.save_config(cfg)
        per_seed = []
        for seed in cfg.seeds:
            if stop is not None and stop.is_set() and per_seed:
                break
            per_seed.append(train_seed(cfg, index, cache, dcfg, seed, run_dir, accelerator, report,
                                       progress, stop, listed=listed, search_trial=search_trial))
        results = summarise(cfg, index, per_seed, run_dir, time.time() - t0, search_trial)
        results["stopped_early_by_user"] = bool(stop is not None and stop.is_set())
        results["num_processes"] = accelerator.num_processes  # torchrun / accelerate launch ranks that trained
        results["runtime"] = rt.record()  # the precision, memory format, compile and checkpointing used
        if accelerator.is_main_process:
            run_dir.write_results(results)
            if not cfg.keep_checkpoints:  # each tensor once: the adapter stays, the resume state goes
                run_dir.drop_checkpoints()
            print(format_summary(results))
            if cfg.push_to_hub:
                from ..hub import push_adapter

                url = push_adapter(run_dir.root / results["adapter_dir"], cfg.push_to_hub, private=cfg.hub_private,
                                   results=results)
                print(f"pushed to {url}")
        accelerator.wait_for_everyone()
    finally:
        run_dir.release()
    return results


def check_splits(cfg: TrainConfig, index) -> None:
    """Every class of a single-label dataset needs images; every seed's split must leave each class in
    the training split (``make_splits`` raises a DataError naming the class otherwise). Dry run, nothing
    written; a resumed run reuses its saved splits."""
    from ..data import DataError, make_splits

    if not index.multilabel and len(index.class_names) < 2:
        raise DataError(f"{index.name}: found a single class ({', '.join(index.class_names) or 'none'}); "
                        f"classification needs at least two class folders/labels")
    if cfg.resume:
        return
    for split_seed in dict.fromkeys(cfg.split_seed_for(seed) for seed in cfg.seeds):
        make_splits(index, seed=split_seed, val_frac=cfg.val_frac, test_frac=cfg.test_frac, fraction=cfg.fraction)


def build_loaders(cfg, index, cache, dcfg, splits, seed):
    """Train (shuffled, seeded, augmented), validation and test loaders over the image cache."""
    from ..data import CachedImageDataset, build_transforms

    # Milder than timm's ImageNet defaults (scale 0.08, jitter 0.4): lesions must stay in the crop.
    train_tf = build_transforms(dcfg, train=True, scale=(0.5, 1.0), color_jitter=0.1)
    eval_tf = build_transforms(dcfg, train=False)
    g = torch.Generator().manual_seed(seed)
    # Workers are started anew each epoch (not persistent): their seeds then come from the loader's
    # generator, reseeded per epoch, so a resumed run draws the same augmentations as an uninterrupted one.
    # (Forking workers over the memory-mapped image cache costs little.)
    kw = dict(batch_size=cfg.batch_size, persistent_workers=False, **loader_options(cfg))
    mk = torch.utils.data.DataLoader
    train = mk(CachedImageDataset(cache, index.labels, splits["train"], train_tf), shuffle=True, generator=g,
               drop_last=len(splits["train"]) > cfg.batch_size, **kw)
    val = mk(CachedImageDataset(cache, index.labels, splits["val"], eval_tf), shuffle=False, **kw)
    test = mk(CachedImageDataset(cache, index.labels, splits["test"], eval_tf), shuffle=False, **kw)
    return train, val, test


def train_seed(cfg: TrainConfig, index, cache, dcfg: dict, seed: int, run_dir: RunDir, accelerator,
               report: ReportFn | None = None, progress: ProgressFn | None = None,
               stop: threading.Event | None = None, listed: dict | None = None, search_trial: bool = False) -> dict:
    """One training seed; ``listed``: fixed splits (split lists) instead of drawn ones; ``search_trial``:
    validation only (the test split is neither predicted nor written)."""
    from accelerate.utils import set_seed

    from ..data import load_splits, make_splits, save_splits

    out = run_dir.seed_dir(seed)
    out.mkdir(parents=True, exist_ok=True)
    split_path = run_dir.splits_path(seed)
    if cfg.resume and split_path.exists():
        splits = load_splits(split_path, index)
    elif listed is not None:
        splits = listed
        if accelerator.is_main_process:
            save_splits(splits, index, split_path, meta={"split_lists": cfg.split_lists, "label_fraction":
                                                         cfg.label_fraction, "labels_from": cfg.labels_from})
    else:
        # One split for every training seed (split_seed) unless --resplit-per-seed; the subsample of a
        # --fraction run is drawn with the split, so it is shared too.
        splits = make_splits(index, seed=cfg.split_seed_for(seed), val_frac=cfg.val_frac, test_frac=cfg.test_frac,
                             fraction=cfg.fraction)
        if accelerator.is_main_process:
            shown = {k: v for k, v in splits.items() if k != "test"} if search_trial else splits
            save_splits(shown, index, split_path, meta={"split_seed": cfg.split_seed_for(seed), "train_seed": seed})
    set_seed(seed)
    backbone = cfg.resolved_backbone()
    model = create_backbone(backbone, len(index.class_names), pretrained=cfg.pretrained, img_size=cfg.img_size,
                            init_checkpoint=cfg.init_checkpoint, global_pool=cfg.global_pool, fc_norm=cfg.fc_norm,
                            drop_path_rate=cfg.drop_path)
    init_report = getattr(model, "medpeft_init_report", None)
    if init_report is not None:
        accelerator.print(f"[seed {seed}] {init_report.summary()}")
    vit_pool = getattr(model, "global_pool", None)  # a ViT's pooling as built (recorded so inference matches)
    pooling = (vit_pool, not isinstance(getattr(model, "fc_norm", nn.Identity()), nn.Identity)) \
        if isinstance(vit_pool, str) else (None, None)
    train_dl, val_dl, test_dl = build_loaders(cfg, index, cache, dcfg, splits, seed)
    with init_batches(train_dl):  # data-driven LoRA inits (EVA, CorDA, LoRA-GA) read the run's own batches
        model = apply_method(model, cfg.method, **cfg.hparams)
    rt = model_runtime(cfg, model)
    model = prepare_model(model, rt)  # channels_last (CNNs on CUDA), --grad-checkpointing, --compile
    trainable, total = count_params(model)
    # ---- BEGIN linear probe on cached features (trainer/features.py) ------------------------------------
    # The frozen backbone runs once per split (features cached on disk, reused by later epochs, seeds and
    # HPO trials); the loop below then trains and evaluates a HeadOnly view - the model's own head module -
    # on features. ``full_model`` stays the model whose adapter (head tensors) is checkpointed and saved.
    full_model = None
    if cfg.method == "linear_probe" and cfg.cache_features:
        from .features import cached_feature_setup

        swap = cached_feature_setup(cfg, model, index, cache, dcfg, splits, seed, accelerator)
        if swap is not None:  # None: this backbone's head cannot be split off, so train on images
            full_model = model
            model, train_dl, val_dl, test_dl = swap
    # ---- END linear probe on cached features -------------------------------------------------------------
    # Steps per epoch on each process (under torchrun accelerate shards the loader, padding to equal
    # shards); the bars and the cap count these. The schedule is built for all processes' steps, as
    # accelerate steps a prepared scheduler once per process.
    steps = math.ceil(len(train_dl) / accelerator.num_processes)
    if cfg.max_steps_per_epoch is not None:
        steps = min(steps, cfg.max_steps_per_epoch)
    resolve_total_steps(model, cfg, cfg.epochs * steps)  # AdaLoRA's budget schedule spans the whole run
    opt = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay,
                          fused=rt.fused_optimizer, optimizer=cfg.optimizer, loraplus_lr_ratio=cfg.loraplus_lr_ratio)
    sched = build_scheduler(opt, cfg.epochs, steps * accelerator.num_processes, cfg.warmup_epochs)
    loader_gen = getattr(train_dl, "generator", None)  # reseeded each epoch (exact resume)
    model, opt, train_dl, val_dl, test_dl, sched = accelerator.prepare(model, opt, train_dl, val_dl, test_dl, sched)
    loss_fn = loss_for(index.multilabel, cfg.label_smoothing)
    plain = accelerator.unwrap_model(model) if full_model is None else full_model  # see the cached-feature branch
    state = {"epoch": 0, "best": -math.inf, "best_epoch": -1, "bad_epochs": 0, "history": []}
    ckpt = run_dir.checkpoint_dir(seed)
    best_path = run_dir.best_weights_path(seed)
    if cfg.resume and (ckpt / "state.json").exists():
        trainer_state, state = load_checkpoint(ckpt, plain)
        opt.load_state_dict(trainer_state["optimizer"])
        sched.load_state_dict(trainer_state["scheduler"])
        set_rng_state(trainer_state["rng"] if "rng" in trainer_state else {"torch": trainer_state["torch_rng"]})
        accelerator.print(f"[seed {seed}] resumed after epoch {state['epoch']} (best {state['best']:.4f})")
    elif accelerator.is_main_process:
        best_path.unlink(missing_ok=True)  # a fresh start (e.g. --overwrite) must not test an old checkpoint
    accelerator.wait_for_everyone()
    main = accelerator.is_main_process
    t0 = time.time()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    # A user's stop ends the run after the current step, but only once there is a validated
    # checkpoint to test and save (at least one step of one epoch).
    stopped = (lambda: stop is not None and stop.is_set())
    while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience and not (
            stopped() and best_path.exists()):
        epoch = state["epoch"] + 1
        if loader_gen is not None:
            loader_gen.manual_seed(epoch_seed(seed, epoch))
        model.train()
        total_loss, n_batches = 0.0, 0
        bar = tqdm(train_dl, total=steps, desc=f"seed {seed} epoch {epoch}/{cfg.epochs}", disable=not main,
                   leave=False, dynamic_ncols=True)
        for step, (x, y) in enumerate(bar):
            if step >= steps or (stopped() and n_batches):
                break
            loss = train_step(model, x, y.float() if index.multilabel else y, loss_fn, opt, sched,
                              grad_clip=cfg.grad_clip, accelerator=accelerator)
            total_loss += loss.item()
            n_batches += 1
            bar.set_postfix(loss=f"{total_loss / n_batches:.4f}")
            if progress is not None:
                progress({"kind": "step", "seed": seed, "epoch": epoch, "step": step + 1, "steps": steps,
                          "loss": total_loss / n_batches})
        bar.close()
        val_out = predict(model, val_dl, accelerator, f"seed {seed} val")
        val = classification_metrics(*val_out, index.class_names, index.multilabel)
        score = headline(val)
        if cfg.select_on == "worst_group":  # FairTune: the epoch whose worst subgroup scores highest
            val["worst_group_score"] = worst_group_score(*val_out, index, splits["val"], cfg.min_group_size)
            score = val["worst_group_score"] if val["worst_group_score"] is not None else -math.inf
        improved = score > state["best"]
        if improved:
            state.update(best=score, best_epoch=epoch, bad_epochs=0)
            if main:
                save_best(plain, best_path)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        state["history"].append({"epoch": epoch, "train_loss": total_loss / max(1, n_batches),
                                 **{k: v for k, v in val.items() if isinstance(v, float)},
                                 "auroc_per_class": val.get("auroc_per_class")})
        accelerator.print(f"[seed {seed}] epoch {epoch:3d}  train loss {total_loss / max(1, n_batches):.4f}  "
                          f"val {val['headline']} {score:.4f}  acc {val.get('accuracy', float('nan')):.4f}"
                          f"{'  *' if improved else ''}")
        if main:
            save_checkpoint(ckpt, plain, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                          "rng": rng_state()}, state)
        if progress is not None:
            progress({"kind": "epoch", "seed": seed, "epoch": epoch, "epochs": cfg.epochs, "improved": improved,
                      "train_loss": state["history"][-1]["train_loss"], "val": val})
        accelerator.wait_for_everyone()
        if report is not None:
            report(epoch, score)
    wall = time.time() - t0
    # Test the best-validation checkpoint, once.
    from adapters.io import load_adapter_weights

    accelerator.wait_for_everyone()
    load_adapter_weights(plain, best_path)
    test_out = None if search_trial else predict(model, test_dl, accelerator, f"seed {seed} test")
    val_out = predict(model, val_dl, accelerator, f"seed {seed} val (best)")
    test = None if search_trial else classification_metrics(*test_out, index.class_names, index.multilabel)
    val_best = classification_metrics(*val_out, index.class_names, index.multilabel)
    # calibration (temperature fitted on val) and subgroups; the test interval and diagram on the main process
    assessment = assess_seed(val_out, test_out, index, splits, out if main else None, seed=seed,
                             min_group_size=cfg.min_group_size, n_resamples=cfg.bootstrap_resamples if main else 0)
    if main:
        outputs = {"val": val_out} if search_trial else {"val": val_out, "test": test_out}
        write_predictions(run_dir.predictions_path(seed), outputs, index, splits,
                          assessment["calibration"]["temperature"])
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    if main:
        acfg = AdapterConfig(
            method=cfg.method, backbone=backbone, num_classes=len(index.class_names), pretrained=cfg.pretrained,
            class_names=list(index.class_names), hparams=dict(cfg.hparams),
            task="multilabel" if index.multilabel else "classification", data_config=dcfg, img_size=cfg.img_size,
            init_checkpoint=cfg.init_checkpoint, init_report=init_report.to_dict() if init_report else None,
            global_pool=pooling[0] if cfg.init_checkpoint or cfg.global_pool else None,
            fc_norm=pooling[1] if pooling[0] is not None and (cfg.init_checkpoint or cfg.fc_norm is not None) else None,
            dataset=cfg.dataset, metrics=adapter_metrics(val_best, test),
            temperature=assessment["calibration"]["temperature"], calibration=card_calibration(assessment),
            training={"seed": seed, "best_epoch": state["best_epoch"], "epochs": cfg.epochs, "lr": cfg.lr,
                      "optimizer": cfg.optimizer, **({"loraplus_lr_ratio": cfg.loraplus_lr_ratio}
                                                     if cfg.optimizer == "loraplus" else {}),
                      "batch_size": cfg.batch_size, "fraction": cfg.fraction,
                      "n_train": len(splits["train"]), "splits": "splits.json"})
        save_adapter(plain, run_dir.adapter_dir(seed), acfg)
        run_dir.write_history(seed, state["history"])
    return {"seed": seed, "val": val_best, "test": test, "best_epoch": state["best_epoch"],
            "epochs_run": state["epoch"], "trainable_params": trainable, "total_params": total,
            "wall_time_s": wall, "peak_memory_bytes": peak,
            "split_seed": cfg.split_seed_for(seed), "split_sizes": {k: len(v) for k, v in splits.items()},
            "init_report": init_report.to_dict() if init_report else None, "assessment": assessment}


def summarise(cfg: TrainConfig, index, per_seed: list[dict], run_dir: RunDir, wall: float,
              search_trial: bool = False) -> dict:
    """The run's results.json contents (:meth:`trainer.run_dir.RunResults.create`): the adapter of the
    seed with the best validation headline is the run's adapter. A search trial's holds no test numbers."""
    best = max(per_seed, key=lambda r: selection_score(r, cfg.select_on))
    metrics = {"val": aggregate([r["val"] for r in per_seed])}
    if not search_trial:
        metrics = {"test": aggregate([r["test"] for r in per_seed]), **metrics}
    results = RunResults.create(
        cfg, task="multilabel" if index.multilabel else "classification", backbone=cfg.resolved_backbone(),
        per_seed=per_seed, adapter_dir=run_dir.adapter_rel(best["seed"]), metrics=metrics,
        wall_time_s=wall, data_notes=list(getattr(index, "notes", [])) + [
            n for r in per_seed if r["test"] is not None
            for n in undefined_notes(r["test"], f"test split (seed {r['seed']})")],
        class_names=list(index.class_names), headline=per_seed[0]["val"]["headline"], selected_on=cfg.select_on,
        **aggregate_assessments(per_seed, best["seed"])).data
    return RunResults.search_trial(results) if search_trial else results


def format_summary(results: dict) -> str:
    split = "test" if "test" in results["metrics"] else "val"  # an HPO trial has validation scores only
    t = results["metrics"][split]
    key = results["headline"]
    lines = [f"{results['method']} on {results['dataset']} ({results['backbone']}), seeds {results['seeds']}:"]
    for k in dict.fromkeys((key, "f1_macro", "accuracy", "balanced_accuracy", "auroc")):
        if k in t:
            lines.append(f"  {split:4s} {k:18s} {100 * t[k]['mean']:6.2f} +- {100 * t[k]['std']:.2f}")
    lines += assessment_lines(results)
    tr, tot = results["trainable_params"], results["total_params"]
    lines.append(f"  trainable params   {tr:,} of {tot:,} ({100 * tr / tot:.3f}%)")
    return "\n".join(lines)
