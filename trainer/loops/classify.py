"""The one classification training loop (every method, every backbone), through accelerate.

Protocol (Dutt et al. 2024): train on the train split, select the epoch with the best validation
macro-F1 (AUROC for multi-label) with early stopping, test that checkpoint once. The test split is
never used for selection. Several seeds give mean +- std.

The output folder (config.yaml, seed_<k>/{splits.json, history.json, checkpoint/, adapter/},
results.json written last) is laid out by :class:`trainer.run_dir.RunDir`; the optimizer, schedule
and step are :mod:`trainer.loops.optim`'s.
"""
from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from adapters import apply_method, count_params, create_backbone, data_config
from adapters.io import AdapterConfig, adapter_state_dict, save_adapter

from .checkpoint import epoch_seed, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ..config import ConfigError, TrainConfig
from ..data.transforms import cache_size_for
from ..run_dir import RunDir, RunExistsError, RunResults
from .optim import build_optimizer, build_scheduler, make_accelerator, train_step
from .metrics import aggregate, classification_metrics, headline, undefined_notes

ReportFn = Callable[[int, float], None]  # (epoch, validation headline) -> may raise optuna.TrialPruned
ProgressFn = Callable[[dict], None]  # live events for a UI: {"kind": "epoch" | "step", ...}


__all__ = ["RunExistsError", "run", "train_seed", "build_loaders", "evaluate", "load_data", "model_data_config",
           "summarise", "format_summary"]


def load_data(cfg: TrainConfig):
    from ..data import load_dataset

    if cfg.data_dir is None:
        raise ConfigError(f"--data-dir is required for dataset {cfg.dataset!r}")
    return load_dataset(cfg.dataset, cfg.data_dir, **cfg.dataset_options)


def model_data_config(model: nn.Module, cfg: TrainConfig) -> dict:
    """The model's timm preprocessing plus the cache's resize ("pre_resize", trainer/data/transforms.py)."""
    from ..data.transforms import PRE_RESIZE, pre_resize_config

    dcfg = data_config(model)
    if cfg.img_size:
        dcfg["input_size"] = [3, cfg.img_size, cfg.img_size]
    dcfg[PRE_RESIZE] = pre_resize_config(dcfg)
    return dcfg


def run(cfg: TrainConfig, report: ReportFn | None = None, progress: ProgressFn | None = None,
        stop: threading.Event | None = None) -> dict:
    """Train every seed, write results.json, save (and push) the adapter. Returns the results dict.

    ``report(epoch, val)`` feeds HPO pruning; ``progress(event)`` receives live step/epoch events;
    setting ``stop`` ends training after the current step: the best validation checkpoint so far is
    tested and saved as usual (and the results say ``stopped_early_by_user``)."""
    from ..data import build_image_cache

    cfg.validate()
    RunDir.check_can_start(cfg)
    accelerator = make_accelerator(cfg.mixed_precision)
    t0 = time.time()
    # The data is read, decoded and split once before anything is written in the run folder: a bad
    # layout, an unreadable image or a split that leaves a class empty fails with nothing left behind.
    index = load_data(cfg)
    backbone = cfg.resolved_backbone()
    with torch.device("meta"):  # only the preprocessing config is needed: no weights allocated
        probe = create_backbone(backbone, len(index.class_names), pretrained=False, img_size=cfg.img_size)
    dcfg = model_data_config(probe, cfg)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.output_dir).parent / ".cache"
    with accelerator.main_process_first():
        cache = build_image_cache(index, cache_dir, cache_size_for(dcfg), workers=max(1, cfg.num_workers),
                                  skip_bad=cfg.skip_bad_images, progress=accelerator.is_main_process)
    index = cache.index
    check_splits(cfg, index)
    run_dir = RunDir.prepare(cfg)
    if accelerator.is_main_process:
        run_dir.save_config(cfg)
    per_seed = []
    for seed in cfg.seeds:
        if stop is not None and stop.is_set() and per_seed:
            break
        per_seed.append(train_seed(cfg, index, cache, dcfg, seed, run_dir, accelerator, report,
                                   progress, stop))
    results = summarise(cfg, index, per_seed, run_dir, time.time() - t0)
    results["stopped_early_by_user"] = bool(stop is not None and stop.is_set())
    results["num_processes"] = accelerator.num_processes  # torchrun / accelerate launch ranks that trained
    if accelerator.is_main_process:
        run_dir.write_results(results)
        print(format_summary(results))
        if cfg.push_to_hub:
            print(f"pushed to {run_dir.push(results, cfg.push_to_hub, private=cfg.hub_private)}")
    accelerator.wait_for_everyone()
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
    kw = dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers, persistent_workers=False,
              pin_memory=torch.cuda.is_available())
    mk = torch.utils.data.DataLoader
    train = mk(CachedImageDataset(cache, index.labels, splits["train"], train_tf), shuffle=True, generator=g,
               drop_last=len(splits["train"]) > cfg.batch_size, **kw)
    val = mk(CachedImageDataset(cache, index.labels, splits["val"], eval_tf), shuffle=False, **kw)
    test = mk(CachedImageDataset(cache, index.labels, splits["test"], eval_tf), shuffle=False, **kw)
    return train, val, test


def _loss_fn(index, cfg):
    if index.multilabel:
        return nn.BCEWithLogitsLoss()
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


@torch.no_grad()
def evaluate(model, loader, accelerator, class_names, multilabel, desc: str = "evaluating") -> dict:
    """Metrics over the whole split: every process's shard gathered (each image counted once)."""
    model.eval()
    all_logits, all_targets = [], []
    for x, y in tqdm(loader, desc=desc, disable=not accelerator.is_main_process, leave=False, dynamic_ncols=True):
        with accelerator.autocast():
            logits = model(x)
        logits, y = accelerator.gather_for_metrics((logits.float(), y))
        all_logits.append(logits.cpu())
        all_targets.append(y.cpu())
    return classification_metrics(torch.cat(all_logits), torch.cat(all_targets), class_names, multilabel)


def train_seed(cfg: TrainConfig, index, cache, dcfg: dict, seed: int, run_dir: RunDir, accelerator,
               report: ReportFn | None = None, progress: ProgressFn | None = None,
               stop: threading.Event | None = None) -> dict:
    from accelerate.utils import set_seed

    from ..data import load_splits, make_splits, save_splits

    out = run_dir.seed_dir(seed)
    out.mkdir(parents=True, exist_ok=True)
    split_path = run_dir.splits_path(seed)
    if cfg.resume and split_path.exists():
        splits = load_splits(split_path, index)
    else:
        # One split for every training seed (split_seed) unless --resplit-per-seed; the subsample of a
        # --fraction run is drawn with the split, so it is shared too.
        splits = make_splits(index, seed=cfg.split_seed_for(seed), val_frac=cfg.val_frac, test_frac=cfg.test_frac,
                             fraction=cfg.fraction)
        if accelerator.is_main_process:
            save_splits(splits, index, split_path, meta={"split_seed": cfg.split_seed_for(seed), "train_seed": seed})
    set_seed(seed)
    backbone = cfg.resolved_backbone()
    model = create_backbone(backbone, len(index.class_names), pretrained=cfg.pretrained, img_size=cfg.img_size)
    model = apply_method(model, cfg.method, **cfg.hparams)
    trainable, total = count_params(model)
    train_dl, val_dl, test_dl = build_loaders(cfg, index, cache, dcfg, splits, seed)
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
    opt = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = build_scheduler(opt, cfg.epochs, steps * accelerator.num_processes, cfg.warmup_epochs)
    loader_gen = getattr(train_dl, "generator", None)  # reseeded each epoch (exact resume)
    model, opt, train_dl, val_dl, test_dl, sched = accelerator.prepare(model, opt, train_dl, val_dl, test_dl, sched)
    loss_fn = _loss_fn(index, cfg)
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
        val = evaluate(model, val_dl, accelerator, index.class_names, index.multilabel, f"seed {seed} val")
        score = headline(val)
        improved = score > state["best"]
        if improved:
            state.update(best=score, best_epoch=epoch, bad_epochs=0)
            if main:
                from adapters.io import save_tensors

                tmp = best_path.with_name(".best.tmp")
                save_tensors(adapter_state_dict(plain), str(tmp))
                os.replace(tmp, best_path)
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
    test = evaluate(model, test_dl, accelerator, index.class_names, index.multilabel, f"seed {seed} test")
    val_best = evaluate(model, val_dl, accelerator, index.class_names, index.multilabel, f"seed {seed} val (best)")
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    if main:
        acfg = AdapterConfig(
            method=cfg.method, backbone=backbone, num_classes=len(index.class_names), pretrained=cfg.pretrained,
            class_names=list(index.class_names), hparams=dict(cfg.hparams),
            task="multilabel" if index.multilabel else "classification", data_config=dcfg, img_size=cfg.img_size,
            dataset=cfg.dataset, metrics={f"test_{k}": v for k, v in test.items() if isinstance(v, float)},
            training={"seed": seed, "best_epoch": state["best_epoch"], "epochs": cfg.epochs, "lr": cfg.lr,
                      "batch_size": cfg.batch_size, "fraction": cfg.fraction,
                      "n_train": len(splits["train"]), "splits": "splits.json"})
        save_adapter(plain, run_dir.adapter_dir(seed), acfg)
        run_dir.write_history(seed, state["history"])
    return {"seed": seed, "val": val_best, "test": test, "best_epoch": state["best_epoch"],
            "epochs_run": state["epoch"], "trainable_params": trainable, "total_params": total,
            "wall_time_s": wall, "peak_memory_bytes": peak,
            "split_seed": cfg.split_seed_for(seed), "split_sizes": {k: len(v) for k, v in splits.items()}}


def summarise(cfg: TrainConfig, index, per_seed: list[dict], run_dir: RunDir, wall: float) -> dict:
    """The run's results.json contents (:meth:`trainer.run_dir.RunResults.create`): the adapter of the
    seed with the best validation headline is the run's adapter."""
    best = max(per_seed, key=lambda r: headline(r["val"]))
    return RunResults.create(
        cfg, task="multilabel" if index.multilabel else "classification", backbone=cfg.resolved_backbone(),
        per_seed=per_seed, adapter_dir=run_dir.adapter_rel(best["seed"]),
        metrics={"test": aggregate([r["test"] for r in per_seed]), "val": aggregate([r["val"] for r in per_seed])},
        wall_time_s=wall, data_notes=list(getattr(index, "notes", [])) + [
            n for r in per_seed for n in undefined_notes(r["test"], f"test split (seed {r['seed']})")],
        class_names=list(index.class_names), headline=per_seed[0]["test"]["headline"]).data


def format_summary(results: dict) -> str:
    t = results["metrics"]["test"]
    key = results["headline"]
    lines = [f"{results['method']} on {results['dataset']} ({results['backbone']}), seeds {results['seeds']}:"]
    for k in dict.fromkeys((key, "f1_macro", "accuracy", "balanced_accuracy", "auroc")):
        if k in t:
            lines.append(f"  test {k:18s} {100 * t[k]['mean']:6.2f} +- {100 * t[k]['std']:.2f}")
    tr, tot = results["trainable_params"], results["total_params"]
    lines.append(f"  trainable params   {tr:,} of {tot:,} ({100 * tr / tot:.3f}%)")
    return "\n".join(lines)
