"""Text-to-image fine-tuning of the Stable Diffusion U-Net with a PEFT method (Dutt et al. 2024,
Section 4.3 / Table 4), sampling, and FID.

    python -m trainer --task generation --method bias_norm_attention --dataset mimic_cxr \\
        --data-dir /data/mimic-cxr-jpg/2.0.0 --base-model runwayml/stable-diffusion-v1-5 \\
        --resolution 512 --max-train-steps 10000 --lr 1e-4 --batch-size 8 --fid-samples 1000

``--base-model`` is a Hub id of a Stable Diffusion 1.x-style pipeline (SD 1.5, RoentGen, ...) or a local
folder saved with ``save_pretrained`` (offline it must be a local folder); loading, sampling and the
loss are :mod:`trainer.diffusion`'s. The VAE and the text encoder
are frozen; the method (``adapters.apply_method(unet, method, **hparams)``) decides what trains in the
U-Net. Loss: MSE of the noise prediction (of the velocity for ``v_prediction`` schedulers), timesteps
uniform, noise from a seeded generator. Learning rates differ a lot between methods (full ~1e-5,
attention/LoRA ~1e-4, bias/norm ~1e-3, SVDiff ~1e-3): set ``--lr``.

Output folder (:class:`trainer.run_dir.RunDir`, flat: one seed; with several seeds each gets ``seed_<k>/``)::

    <output_dir>/config.yaml                 the resolved configuration
    <output_dir>/validation/step_XXXX_k.png  validation images (every --validation-steps and at the end)
    <output_dir>/checkpoint/                 adapter tensors + optimizer/RNG/EMA state for --resume (atomic;
                                             safetensors + torch.load(weights_only=True) only)
    <output_dir>/adapter/                    the adapter folder (adapters.io), + pytorch_lora_weights.safetensors
                                             for LoRA (loads with StableDiffusionPipeline.load_lora_weights)
    <output_dir>/fid/generated/*.png         the test-prompt images FID was computed on (with --fid-samples N)
    <output_dir>/geneval/test.json, val.json the full reports of trainer.geneval: FID, KID, precision/recall/
                                             density/coverage, MS-SSIM diversity, memorization against the
                                             run's own training pairs (+ contact sheets); val with a
                                             validation split (--val-frac or --dataset-option val_frac=...)
    <output_dir>/results.json                written last

Checkpoints are written every ``--validation-steps`` and at the end; ``--resume`` continues from the last
one (also with a larger ``--max-train-steps`` after a finished run) and reproduces an uninterrupted run
exactly (same data order, noise and optimizer state).
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from adapters import apply_method, count_params, get_method, methods_for
from adapters.io import AdapterConfig, save_adapter

from ..config import ConfigError, TrainConfig
from ..diffusion import (GenerationError, build_pipeline, check_base, diffusion_loss, encode_images, encode_prompts,
                         from_pretrained, load_components)
from ..geneval.nearest import write_train_pairs
from ..geneval.scoring import generate_images, score_run
from ..run_dir import RunDir, RunResults
from .checkpoint import load_checkpoint, save_checkpoint
from .metrics import aggregate
from .optim import build_optimizer, make_accelerator
from .precision import loader_options, prepare_model, resolve_runtime

BACKBONE = "stable_diffusion_unet"


class EMA:
    """Exponential moving average of the trainable parameters (fp32), decay ``min(0.9999, (1+n)/(10+n))``."""

    def __init__(self, params: list[nn.Parameter], max_decay: float = 0.9999):
        self.params = params
        self.shadow = [p.detach().float().clone() for p in params]
        self.max_decay, self.steps = max_decay, 0

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        decay = min(self.max_decay, (1 + self.steps) / (10 + self.steps))
        for s, p in zip(self.shadow, self.params):
            s.mul_(decay).add_(p.detach().float(), alpha=1 - decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the live and the averaged weights (call twice to restore)."""
        for s, p in zip(self.shadow, self.params):
            live = p.detach().float().clone()
            p.copy_(s.to(p.dtype))
            s.copy_(live)

    def state_dict(self) -> dict:
        return {"shadow": [s.cpu() for s in self.shadow], "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.shadow = [s.to(p.device) for s, p in zip(state["shadow"], self.params)]
        self.steps = int(state["steps"])


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: a permutation seeded by (seed, epoch); the last short batch is dropped
    when there is more than one batch."""
    g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    order = torch.randperm(n, generator=g).tolist()
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def _save_checkpoint(path: Path, unet, optimizer, generator: torch.Generator, ema: EMA | None, state: dict) -> None:
    trainer_state = {"optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                     "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        trainer_state["cuda_rng"] = torch.cuda.get_rng_state_all()
    if ema is not None:
        trainer_state["ema"] = ema.state_dict()
    save_checkpoint(path, unet, trainer_state, state)


def _load_checkpoint(path: Path, unet, optimizer, generator: torch.Generator, ema: EMA | None) -> dict:
    st, state = load_checkpoint(path, unet)
    optimizer.load_state_dict(st["optimizer"])
    generator.set_state(st["generator"])
    torch.set_rng_state(st["torch_rng"])
    if "cuda_rng" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda_rng"])
    if ema is not None and "ema" in st:
        ema.load_state_dict(st["ema"])
    return state


def _cast_frozen(module: nn.Module, dtype: torch.dtype) -> None:
    """Frozen parameters to ``dtype``; trainable parameters (and buffers such as SVD factors) stay fp32."""
    for p in module.parameters():
        if not p.requires_grad:
            p.data = p.data.to(dtype)


# ------------------------------------------------------------------------------------ the run
def _weight_dtype(precision: str) -> torch.dtype:
    """The frozen weights' dtype for accelerate's resolved ``mixed_precision`` (never ``auto``)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def _load_data(cfg: TrainConfig, tokenizer, seed: int):
    import inspect

    from ..data.text2img import GEN_DATASETS, load_generation_data

    options = dict(cfg.dataset_options)
    fn = GEN_DATASETS.get(cfg.dataset)
    for name in ("test_frac", "val_frac"):
        if fn is not None and getattr(cfg, name) is not None and name in inspect.signature(fn).parameters:
            options.setdefault(name, getattr(cfg, name))
    return load_generation_data(cfg.dataset, cfg.data_dir, tokenizer, fraction=cfg.fraction, seed=seed, **options)


def _validation_prompts(cfg: TrainConfig, data) -> list[str]:
    if cfg.validation_prompts:
        return list(cfg.validation_prompts)
    prompts = list(dict.fromkeys(p.text for p in data.test))
    return prompts[:2]


def _validate(cfg, parts, unet, prompts, step: int, out: Path, accelerator, seed: int) -> list[Path]:
    was_training = unet.training
    unet.eval()
    pipe = build_pipeline(parts, unet)
    images = generate_images(pipe, prompts, [seed] * len(prompts), cfg, accelerator, batch_size=len(prompts) or 1)
    folder = out / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, img in enumerate(images):
        path = folder / f"step_{step:04d}_{k}.png"
        img.save(path)
        paths.append(path)
    unet.train(was_training)
    return paths


def train_seed(cfg: TrainConfig, parts: dict[str, Any], seed: int, run_dir: RunDir, accelerator,
               search_trial: bool = False) -> dict:
    from accelerate.utils import set_seed
    from diffusers import UNet2DConditionModel

    from ..data.text2img import PairDataset

    out = run_dir.seed_dir(seed)
    out.mkdir(parents=True, exist_ok=True)
    main = accelerator.is_main_process
    set_seed(seed)
    data = _load_data(cfg, parts["tokenizer"], seed)
    if cfg.fid_samples == 1 or (cfg.fid_samples > 1 and len(data.test) < 2):
        raise GenerationError(f"FID needs at least 2 generated and 2 real test images: --fid-samples "
                              f"{cfg.fid_samples}, {len(data.test)} test pair(s)")
    base = check_base(cfg.base_model)
    device = accelerator.device
    unet = from_pretrained(UNet2DConditionModel, base, "unet").to(device)  # SVDiff's SVDs run on the device
    unet = apply_method(unet, cfg.method, **cfg.hparams)
    trainable, total = count_params(unet)
    if trainable == 0:
        raise GenerationError(f"method {cfg.method!r} leaves nothing to train in this U-Net")
    rt = resolve_runtime(cfg, "unet")  # the same pure answer as run()'s (trainer/loops/precision.py)
    unet = prepare_model(unet, rt)  # --grad-checkpointing: the U-Net's own; --compile
    dtype = _weight_dtype(rt.precision)
    for name in ("vae", "text_encoder"):
        parts[name].to(device)
        if dtype != torch.float32:
            parts[name].to(dtype=dtype)
    if dtype != torch.float32:
        _cast_frozen(unet, dtype)
    params = [p for p in unet.parameters() if p.requires_grad]
    # As the classification loop: no weight decay on 1-D tensors (biases, norm gains, DiffFit's scales).
    optimizer = build_optimizer(unet, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=rt.fused_optimizer)
    ema = EMA(params) if cfg.ema else None
    unet, optimizer = accelerator.prepare(unet, optimizer)
    plain = accelerator.unwrap_model(unet)
    generator = torch.Generator(device=device).manual_seed(seed)
    dataset = PairDataset(data.train, parts["tokenizer"], cfg.resolution)
    if len(dataset) < cfg.batch_size:
        warnings.warn(f"{len(dataset)} training pairs, fewer than --batch-size {cfg.batch_size}")
    state: dict[str, Any] = {"step": 0, "losses": []}
    ckpt = run_dir.checkpoint_dir(seed)
    if cfg.resume and (ckpt / "state.json").exists():
        state = _load_checkpoint(ckpt, plain, optimizer, generator, ema)
        accelerator.print(f"[seed {seed}] resumed at step {state['step']}")
    prompts = _validation_prompts(cfg, data)
    log_every = max(1, min(50, cfg.max_train_steps // 10))
    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = max(1, cfg.batch_size)
    steps_per_epoch = max(1, len(epoch_batches(len(dataset), per_step, seed, 0)) // world)
    bar = tqdm(total=cfg.max_train_steps, initial=state["step"], desc=f"seed {seed} {cfg.method}",
               disable=not main, dynamic_ncols=True)
    t0 = time.time()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    unet.train()
    while state["step"] < cfg.max_train_steps:
        epoch, offset = divmod(state["step"], steps_per_epoch)
        batches = epoch_batches(len(dataset), per_step, seed, epoch)[rank::world][offset:steps_per_epoch]
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, **loader_options(cfg))
        for batch in loader:
            latents = encode_images(parts["vae"], batch["pixel_values"], generator)
            hidden = encode_prompts(parts["tokenizer"], parts["text_encoder"], batch["input_ids"])
            noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
            timesteps = torch.randint(0, parts["noise_scheduler"].config.num_train_timesteps, (latents.shape[0],),
                                      generator=generator, device=latents.device)
            with accelerator.autocast():
                loss = diffusion_loss(unet, parts["noise_scheduler"], latents, hidden, noise, timesteps)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if cfg.grad_clip:
                accelerator.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update()
            state["step"] += 1
            state["losses"].append(float(loss.detach().float()))
            bar.update(1)
            step = state["step"]
            if step % log_every == 0 or step == cfg.max_train_steps:
                recent = state["losses"][-log_every:]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
                accelerator.print(f"[seed {seed}] step {step}/{cfg.max_train_steps}  loss "
                                  f"{sum(recent) / len(recent):.4f}  ({time.time() - t0:.0f}s)")
            periodic = cfg.validation_steps > 0 and step % cfg.validation_steps == 0
            if periodic or step == cfg.max_train_steps:
                if main:
                    if ema is not None:
                        ema.swap()
                    if prompts and cfg.validation_steps > 0:
                        _validate(cfg, parts, plain, prompts, step, out, accelerator, seed)
                    if ema is not None:
                        ema.swap()
                    _save_checkpoint(ckpt, plain, optimizer, generator, ema, state)
                accelerator.wait_for_everyone()
            if step >= cfg.max_train_steps:
                break
    bar.close()
    wall = time.time() - t0
    if ema is not None:
        ema.swap()  # the saved adapter and FID use the averaged weights
    plain.eval()
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    result = {"seed": seed, "steps": state["step"], "final_loss": state["losses"][-1] if state["losses"] else None,
              "trainable_params": trainable, "total_params": total, "wall_time_s": wall,
              "peak_memory_bytes": peak, "split_sizes": data.sizes(), "data_notes": data.notes, "test": {}}
    acfg = AdapterConfig(
        method=cfg.method, backbone=str(cfg.base_model), num_classes=0, task="generation", dataset=cfg.dataset,
        img_size=cfg.resolution, grayscale="replicate",
        training={"seed": seed, "steps": state["step"], "lr": cfg.lr, "batch_size": cfg.batch_size,
                  "fraction": cfg.fraction, "n_train": len(data.train), "resolution": cfg.resolution,
                  "mixed_precision": rt.precision, "ema": cfg.ema})
    if main:
        save_adapter(plain, run_dir.adapter_dir(seed), acfg)
        write_train_pairs(out, data.train)  # the app's nearest-training-image view (local paths, not pushed)
        if cfg.fid_samples > 0:  # FID, KID, PRDC, diversity, memorization (trainer.geneval)
            scored = score_run(cfg, parts, plain, data, out, accelerator, seed, search_trial=search_trial)
            result["test"], result["val"] = scored["test"] or {}, scored["val"] or {}
            result["fid_samples"], result["noise_norm"] = scored["fid_samples"], scored["noise_norm"]
            split = "val" if search_trial else "test"  # a search trial never generates for the test prompts
            shown = scored[split] or {}
            fid = shown.get("fid")
            acfg.metrics = {f"{split}_fid": fid, "fid_samples": int(cfg.fid_samples),
                            "fid_real_samples": scored["fid_samples"]["real"],
                            **{f"{split}_{k}": v for k, v in shown.items() if k != "fid"}}
            save_adapter(plain, run_dir.adapter_dir(seed), acfg)
            mem = shown.get("memorization")
            if fid is not None:
                accelerator.print(f"[seed {seed}] {split} FID {fid:.3f}, KID {shown['kid']:.4f}"
                                  + (f", memorized {100 * mem:.1f}%" if mem is not None else "")
                                  + f" ({scored['fid_samples']['generated']} generated vs "
                                  f"{scored['fid_samples']['real']} real {split} images)")
    accelerator.wait_for_everyone()
    return result


def run(cfg: TrainConfig, search_trial: bool = False) -> dict:
    """Fine-tune the U-Net of ``cfg.base_model`` with ``cfg.method`` for each seed, write validation images,
    checkpoints, the adapter folder, FID (``cfg.fid_samples > 0``) and ``results.json``; returns the results.
    ``search_trial``: an HPO trial, scored on the validation split only (nothing is generated for the test
    prompts, and its results hold no test score)."""
    cfg.validate()
    if cfg.task != "generation":
        raise ConfigError(f"trainer.loops.generate runs task=generation, not {cfg.task!r}")
    if "unet" not in get_method(cfg.method).families:
        raise ConfigError(f"method {cfg.method!r} does not apply to the U-Net; U-Net methods: "
                          + ", ".join(m.name for m in methods_for("unet")))
    for name, lo in (("max_train_steps", 1), ("resolution", 8), ("num_inference_steps", 1)):
        if getattr(cfg, name) < lo:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {lo}")
    if cfg.resolution % 8:
        raise ConfigError(f"--resolution must be a multiple of 8, got {cfg.resolution}")
    check_base(cfg.base_model)
    run_dir = RunDir.prepare(cfg, flat=True)
    rt = resolve_runtime(cfg, "unet")
    accelerator = make_accelerator(rt.precision, non_blocking=rt.non_blocking)
    if accelerator.is_main_process:
        run_dir.save_config(cfg)
    t0 = time.time()
    parts = load_components(cfg.base_model, unet=False)  # each seed loads its own U-Net
    per_seed = [train_seed(cfg, parts, seed, run_dir, accelerator, search_trial) for seed in cfg.seeds]
    tested = all(r["test"] for r in per_seed)
    validated = all(r.get("val") for r in per_seed)
    results = RunResults.create(
        cfg, task="generation", backbone=BACKBONE, per_seed=per_seed, adapter_dir=run_dir.adapter_rel(cfg.seeds[0]),
        metrics={"test": aggregate([r["test"] for r in per_seed]) if tested else {},
                 **({"val": aggregate([r["val"] for r in per_seed])} if validated else {})},
        wall_time_s=time.time() - t0, data_notes=per_seed[0]["data_notes"], base_model=cfg.base_model).data
    results["runtime"] = rt.record()  # the precision, compile and checkpointing actually used
    if accelerator.is_main_process:
        run_dir.write_results(results)
        if not cfg.keep_checkpoints:  # each tensor once: the adapter stays, the resume state goes
            run_dir.drop_checkpoints()
        run_dir.release()
        fid = results["metrics"]["test"].get("fid")
        tr, tot = results["trainable_params"], results["total_params"]
        print(f"{cfg.method} on {cfg.dataset} ({cfg.base_model}), seeds {cfg.seeds}: trainable {tr:,} of {tot:,} "
              f"({100 * tr / tot:.3f}%)" + (f"; FID {fid['mean']:.3f} +- {fid['std']:.3f}" if fid else ""))
        if cfg.push_to_hub:
            from ..hub import push_adapter

            url = push_adapter(run_dir.root / results["adapter_dir"], cfg.push_to_hub, private=cfg.hub_private,
                               results=results)
            print(f"pushed to {url}")
    accelerator.wait_for_everyone()
    return results
