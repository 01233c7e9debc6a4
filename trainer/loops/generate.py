"""Text-to-image fine-tuning of the Stable Diffusion U-Net with a PEFT method (Dutt et al. 2024,
Section 4.3 / Table 4), sampling, and FID.

    python -m trainer --task generation --method bias_norm_attention --dataset mimic_cxr \\
        --data-dir /data/mimic-cxr-jpg/2.0.0 --base-model runwayml/stable-diffusion-v1-5 \\
        --resolution 512 --max-train-steps 10000 --lr 1e-4 --batch-size 8 --fid-samples 1000

``--base-model`` is a Hub id of a Stable Diffusion 1.x-style pipeline (SD 1.5, RoentGen, ...) or a local
folder saved with ``save_pretrained`` (offline it must be a local folder). The VAE and the text encoder
are frozen; the method (``adapters.apply_method(unet, method, **hparams)``) decides what trains in the
U-Net. Loss: MSE of the noise prediction (of the velocity for ``v_prediction`` schedulers), timesteps
uniform, noise from a seeded generator. Learning rates differ a lot between methods (full ~1e-5,
attention/LoRA ~1e-4, bias/norm ~1e-3, SVDiff ~1e-3): set ``--lr``.

Output folder (one seed; with several seeds each gets ``seed_<k>/``)::

    <output_dir>/config.yaml                 the resolved configuration
    <output_dir>/validation/step_XXXX_k.png  validation images (every --validation-steps and at the end)
    <output_dir>/checkpoint/                 adapter tensors + optimizer/RNG/EMA state for --resume (atomic;
                                             safetensors + torch.load(weights_only=True) only)
    <output_dir>/adapter/                    the adapter folder (adapters.io), + pytorch_lora_weights.safetensors
                                             for LoRA (loads with StableDiffusionPipeline.load_lora_weights)
    <output_dir>/fid/generated/*.png         the images FID was computed on (with --fid-samples N)
    <output_dir>/results.json                written last

Checkpoints are written every ``--validation-steps`` and at the end; ``--resume`` continues from the last
one (also with a larger ``--max-train-steps`` after a finished run) and reproduces an uninterrupted run
exactly (same data order, noise and optimizer state).

Sampling (the app): :func:`load_generation_pipeline` + :func:`sample`. Tests and demos:
:func:`make_tiny_pipeline` writes a complete tiny pipeline folder.
"""
from __future__ import annotations

import json
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from adapters import apply_method, count_params, get_method, merge_method, methods_for
from adapters.io import AdapterConfig, library_versions, save_adapter

from .checkpoint import load_checkpoint, save_checkpoint
from ..config import ConfigError, TrainConfig

BASE_HINT = ("pass --base-model (base_model=) a Hugging Face Hub id of a Stable Diffusion pipeline (e.g. an SD 1.5 "
             "repo or RoentGen) or a local folder saved with save_pretrained; offline it must be a local folder")
BACKBONE = "stable_diffusion_unet"


class GenerationError(ConfigError):
    """A base model, adapter, prompt or option for text-to-image is not usable; the message says why."""


# ------------------------------------------------------------------------------------ loading
def check_base(base_model: str | os.PathLike | None) -> str:
    """A usable base-model string (local pipeline folder or Hub id) or a clear error."""
    base = str(base_model or "").strip()
    if not base:
        raise GenerationError(f"no base model: {BASE_HINT}")
    path = Path(base).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file() and not (path / "unet" / "config.json").is_file():
            raise GenerationError(f"{base} is a folder but not a diffusers Stable Diffusion pipeline "
                                  f"(model_index.json and unet/ not found); {BASE_HINT}")
        return str(path)
    if path.exists() or base.startswith((".", "/", "~")) or base.count("/") != 1:
        raise GenerationError(f"base model {base!r} not found: it is neither a local folder nor a Hub id "
                              f"(owner/name); {BASE_HINT}")
    return base


def _from_pretrained(cls, base: str, subfolder: str, **kwargs):
    try:
        return cls.from_pretrained(base, subfolder=subfolder, **kwargs)
    except Exception as e:  # offline Hub, missing subfolder, gated repo...
        raise GenerationError(f"could not load {subfolder}/ of base model {base!r} ({type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); {BASE_HINT}") from e


def _has_local_tokenizer(base: str) -> bool:
    folder = Path(base) / "tokenizer"
    return folder.is_dir() and any((folder / n).is_file() for n in ("vocab.json", "tokenizer.json"))


def load_tokenizer(base: str):
    """The base model's CLIP tokenizer; offline or when it has none, the offline CLIP tokenizer
    (:mod:`trainer.data.tokenizer`, the same BPE as SD 1.x's), with a warning."""
    from transformers import CLIPTokenizer

    from ..data.tokenizer import clip_tokenizer

    if Path(base).is_dir() and not _has_local_tokenizer(base):
        warnings.warn(f"{base} has no tokenizer/ folder: using the offline CLIP tokenizer (SD 1.x's vocabulary)")
        return clip_tokenizer()
    try:
        return CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    except Exception as e:
        warnings.warn(f"could not load the tokenizer of {base!r} ({type(e).__name__}): using the offline CLIP "
                      "tokenizer (SD 1.x's vocabulary)")
        return clip_tokenizer()


def sampling_scheduler(base: str):
    """The pipeline's own sampling scheduler (PNDM for SD 1.5), built from its ``scheduler/`` config."""
    import diffusers

    try:
        config = diffusers.DDPMScheduler.load_config(base, subfolder="scheduler")
    except Exception as e:
        raise GenerationError(f"could not read scheduler/ of base model {base!r} ({type(e).__name__}); "
                              f"{BASE_HINT}") from e
    cls = getattr(diffusers, str(config.get("_class_name") or ""), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        cls = diffusers.PNDMScheduler
    return cls.from_config(config)


def load_components(base_model: str, unet: bool = True) -> dict[str, Any]:
    """tokenizer, text_encoder, vae, unet (fp32, CPU; left out with ``unet=False``), noise_scheduler (DDPM,
    training) and scheduler (the pipeline's sampling scheduler) of a base model."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    base = check_base(base_model)
    parts = {
        "tokenizer": load_tokenizer(base),
        "text_encoder": _from_pretrained(CLIPTextModel, base, "text_encoder"),
        "vae": _from_pretrained(AutoencoderKL, base, "vae"),
        "unet": _from_pretrained(UNet2DConditionModel, base, "unet") if unet else None,
        "noise_scheduler": _from_pretrained(DDPMScheduler, base, "scheduler"),
        "scheduler": sampling_scheduler(base),
    }
    for m in (parts["text_encoder"], parts["vae"]):
        m.requires_grad_(False).eval()
    return parts


def build_pipeline(parts: dict[str, Any], unet: nn.Module | None = None):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                                   unet=unet if unet is not None else parts["unet"],
                                   scheduler=type(parts["scheduler"]).from_config(parts["scheduler"].config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_generation_pipeline(base_model: str, adapter_dir: str | os.PathLike | None = None, device: str = "cpu",
                             dtype: torch.dtype | None = None, merge: bool = True):
    """A ``StableDiffusionPipeline`` of ``base_model`` (Hub id or local folder), with a MedPEFT generation
    adapter applied to its U-Net and merged into it where the method allows (all U-Net methods do).

    ``dtype``: default float32 on CPU, float16 on CUDA. No safety checker (medical images)."""
    from adapters.io import load_adapter, read_config

    parts = load_components(base_model)
    unet = parts["unet"].to(device)  # the method (e.g. SVDiff's SVDs) is applied on the device
    if adapter_dir is not None:
        cfg = read_config(adapter_dir)
        if cfg.task != "generation":
            raise GenerationError(f"{adapter_dir} is a {cfg.task} adapter (for {cfg.backbone}), not a text-to-image "
                                  "(generation) adapter")
        unet, _ = load_adapter(adapter_dir, model=unet)
        if merge and get_method(cfg.method).merge is not None:
            unet = merge_method(unet)
    unet.eval()
    pipe = build_pipeline(parts, unet)
    if dtype is None:
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    pipe = pipe.to(device)
    return pipe.to(dtype=dtype) if dtype != torch.float32 else pipe


def sample(pipe, prompt: str, steps: int = 25, guidance: float = 7.5, seed: int = 0, height: int | None = None,
           width: int | None = None):
    """One image (PIL) for ``prompt``; the same seed gives the same image. Prompts longer than the CLIP
    context (77 tokens with start/end) are truncated, with a warning."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise GenerationError("the prompt is empty: enter a report text (e.g. a radiology impression) to "
                              "generate an image from")
    prompt = " ".join(prompt.split())
    steps = int(steps)
    if steps < 1:
        raise GenerationError(f"the number of inference steps must be at least 1, got {steps}")
    tok = pipe.tokenizer
    n = len(tok(prompt, truncation=False).input_ids)
    if n > tok.model_max_length:
        warnings.warn(f"the prompt has {n} tokens but CLIP reads at most {tok.model_max_length} (start/end "
                      f"included): it was truncated to its first {tok.model_max_length - 2} tokens", stacklevel=2)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    with torch.no_grad():
        out = pipe(prompt, num_inference_steps=steps, guidance_scale=float(guidance), generator=generator,
                   height=height, width=width, output_type="pil")
    return out.images[0]


# ------------------------------------------------------------------------------------ tiny pipeline
def make_tiny_pipeline(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Save a complete, tiny, random Stable Diffusion pipeline (tiny U-Net, 2-level AutoencoderKL, a
    2-layer CLIP text encoder of width 32 with CLIP's 49,408-token vocabulary and 77 positions, the
    offline CLIP tokenizer, SD 1.5's PNDM scheduler) to ``folder``; native size 32 x 32 pixels."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from adapters.unet import build_unet

    from ..data.tokenizer import clip_tokenizer

    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = build_unet("tiny", empty=False, seed=seed)
        vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32),
                            layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=32)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=49408,
            max_position_embeddings=77, projection_dim=32, bos_token_id=49406, eos_token_id=49407,
            pad_token_id=49407))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(folder))
    return folder


# ------------------------------------------------------------------------------------ training pieces
def encode_prompts(tokenizer, text_encoder, prompts: list[str] | torch.Tensor) -> torch.Tensor:
    """CLIP last hidden states ``[B, 77, D]`` for prompts (or already tokenized ``input_ids``)."""
    if isinstance(prompts, torch.Tensor):
        ids = prompts
    else:
        ids = tokenizer(list(prompts), padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                        return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids.to(text_encoder.device))[0]


def encode_images(vae, pixel_values: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """VAE latents (sampled, times the VAE's scaling factor) of images in [-1, 1]."""
    with torch.no_grad():
        dist = vae.encode(pixel_values.to(vae.device, vae.dtype)).latent_dist
        return (dist.sample(generator=generator) * vae.config.scaling_factor).float()


def diffusion_loss(unet, noise_scheduler, latents: torch.Tensor, encoder_hidden_states: torch.Tensor,
                   noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The denoising loss: MSE between the U-Net's prediction and the scheduler's target (the noise for
    ``epsilon``, the velocity for ``v_prediction``, the clean latents for ``sample``)."""
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    elif kind == "sample":
        target = latents
    else:
        raise GenerationError(f"unsupported scheduler prediction_type {kind!r}")
    pred = unet(noisy, timesteps, encoder_hidden_states, return_dict=False)[0]
    return F.mse_loss(pred.float(), target.float())


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


def _atomic_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


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
def _weight_dtype(cfg: TrainConfig) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision, torch.float32)


def _load_data(cfg: TrainConfig, tokenizer, seed: int):
    import inspect

    from ..data.text2img import GEN_DATASETS, load_generation_data

    options = dict(cfg.dataset_options)
    fn = GEN_DATASETS.get(cfg.dataset)
    if fn is not None and "test_frac" in inspect.signature(fn).parameters:
        options.setdefault("test_frac", cfg.test_frac)
    return load_generation_data(cfg.dataset, cfg.data_dir, tokenizer, fraction=cfg.fraction, seed=seed, **options)


def _validation_prompts(cfg: TrainConfig, data) -> list[str]:
    if cfg.validation_prompts:
        return list(cfg.validation_prompts)
    prompts = list(dict.fromkeys(p.text for p in data.test))
    return prompts[:2]


@torch.no_grad()
def _generate(pipe, prompts: list[str], seeds: list[int], cfg: TrainConfig, accelerator, batch_size: int):
    images = []
    for i in range(0, len(prompts), batch_size):
        gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds[i:i + batch_size]]
        with accelerator.autocast():
            out = pipe(prompts[i:i + batch_size], num_inference_steps=cfg.num_inference_steps,
                       guidance_scale=cfg.guidance_scale, generator=gens, height=cfg.resolution,
                       width=cfg.resolution, output_type="pil")
        images += out.images
    return images


def _validate(cfg, parts, unet, prompts, step: int, out: Path, accelerator, seed: int) -> list[Path]:
    was_training = unet.training
    unet.eval()
    pipe = build_pipeline(parts, unet)
    images = _generate(pipe, prompts, [seed] * len(prompts), cfg, accelerator, batch_size=len(prompts) or 1)
    folder = out / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, img in enumerate(images):
        path = folder / f"step_{step:04d}_{k}.png"
        img.save(path)
        paths.append(path)
    unet.train(was_training)
    return paths


def _fid(cfg, parts, unet, data, out: Path, accelerator, seed: int) -> float:
    from .fid import compute_fid
    from ..data.text2img import load_grayscale

    n = int(cfg.fid_samples)
    test = data.test
    prompts = [test[i % len(test)].text for i in range(n)]
    unet.eval()
    pipe = build_pipeline(parts, unet)
    fakes = _generate(pipe, prompts, [seed * 1_000_003 + i for i in range(n)], cfg, accelerator,
                      batch_size=max(1, cfg.batch_size))
    folder = out / "fid" / "generated"
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(fakes):
        img.save(folder / f"{i:05d}.png")
    reals = [load_grayscale(p.path, cfg.resolution).convert("RGB") for p in test[:n]]
    return compute_fid(reals, fakes, batch_size=max(2, cfg.batch_size), device=accelerator.device)


def train_seed(cfg: TrainConfig, parts: dict[str, Any], seed: int, out: Path, accelerator) -> dict:
    from accelerate.utils import set_seed
    from diffusers import UNet2DConditionModel

    from ..data.text2img import PairDataset

    out.mkdir(parents=True, exist_ok=True)
    main = accelerator.is_main_process
    set_seed(seed)
    data = _load_data(cfg, parts["tokenizer"], seed)
    if cfg.fid_samples == 1 or (cfg.fid_samples > 1 and len(data.test) < 2):
        raise GenerationError(f"FID needs at least 2 generated and 2 real test images: --fid-samples "
                              f"{cfg.fid_samples}, {len(data.test)} test pair(s)")
    base = check_base(cfg.base_model)
    device = accelerator.device
    unet = _from_pretrained(UNet2DConditionModel, base, "unet").to(device)  # SVDiff's SVDs run on the device
    unet = apply_method(unet, cfg.method, **cfg.hparams)
    trainable, total = count_params(unet)
    if trainable == 0:
        raise GenerationError(f"method {cfg.method!r} leaves nothing to train in this U-Net")
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    dtype = _weight_dtype(cfg)
    for name in ("vae", "text_encoder"):
        parts[name].to(device)
        if dtype != torch.float32:
            parts[name].to(dtype=dtype)
    if dtype != torch.float32:
        _cast_frozen(unet, dtype)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(params) if cfg.ema else None
    unet, optimizer = accelerator.prepare(unet, optimizer)
    plain = accelerator.unwrap_model(unet)
    generator = torch.Generator(device=device).manual_seed(seed)
    dataset = PairDataset(data.train, parts["tokenizer"], cfg.resolution)
    if len(dataset) < cfg.batch_size:
        warnings.warn(f"{len(dataset)} training pairs, fewer than --batch-size {cfg.batch_size}")
    state: dict[str, Any] = {"step": 0, "losses": []}
    ckpt = out / "checkpoint"
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
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=cfg.num_workers)
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
                  "mixed_precision": cfg.mixed_precision, "ema": cfg.ema})
    if main:
        save_adapter(plain, out / "adapter", acfg)
        if cfg.fid_samples > 0:
            fid = _fid(cfg, parts, plain, data, out, accelerator, seed)
            result["test"] = {"fid": fid}
            acfg.metrics = {"test_fid": fid, "fid_samples": int(cfg.fid_samples)}
            save_adapter(plain, out / "adapter", acfg)
            accelerator.print(f"[seed {seed}] FID {fid:.3f} ({cfg.fid_samples} generated vs "
                              f"{min(cfg.fid_samples, len(data.test))} real test images)")
    accelerator.wait_for_everyone()
    return result


def _accelerator(cfg: TrainConfig):
    """An ``Accelerator``; in a single process that already made one with another precision (several runs
    in one Python session, e.g. tests or the web UI), accelerate's process-wide state is reset first."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    try:
        return Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())
    except ValueError as e:
        if "already been initialized" not in str(e) or PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(mixed_precision=cfg.mixed_precision, cpu=not torch.cuda.is_available())


def run(cfg: TrainConfig) -> dict:
    """Fine-tune the U-Net of ``cfg.base_model`` with ``cfg.method`` for each seed, write validation images,
    checkpoints, the adapter folder, FID (``cfg.fid_samples > 0``) and ``results.json``; returns the results."""
    from .classify import git_commit, prepare_output
    from .metrics import aggregate

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
    out = prepare_output(cfg)
    accelerator = _accelerator(cfg)
    if accelerator.is_main_process:
        cfg.save(out / "config.yaml")
    t0 = time.time()
    parts = load_components(cfg.base_model, unet=False)  # each seed loads its own U-Net
    per_seed = []
    for seed in cfg.seeds:
        folder = out if len(cfg.seeds) == 1 else out / f"seed_{seed}"
        per_seed.append(train_seed(cfg, parts, seed, folder, accelerator))
    first = per_seed[0]
    adapter_dir = "adapter" if len(cfg.seeds) == 1 else f"seed_{cfg.seeds[0]}/adapter"
    results = {
        "kind": "medpeft-run", "task": "generation", "method": cfg.method, "backbone": BACKBONE,
        "base_model": cfg.base_model, "dataset": cfg.dataset, "fraction": cfg.fraction,
        "n_train": first["split_sizes"]["train"], "split_sizes": first["split_sizes"],
        "seeds": list(cfg.seeds),
        "metrics": {"test": aggregate([r["test"] for r in per_seed]) if all(r["test"] for r in per_seed) else {}},
        "trainable_params": first["trainable_params"], "total_params": first["total_params"],
        "adapter_dir": adapter_dir, "per_seed": per_seed, "data_notes": first["data_notes"],
        "wall_time_s": time.time() - t0, "config": cfg.to_dict(),
        "versions": {**library_versions(), "python": platform.python_version()}, "git_commit": git_commit(),
    }
    if accelerator.is_main_process:
        _atomic_json(out / "results.json", results)
        fid = results["metrics"]["test"].get("fid")
        tr, tot = results["trainable_params"], results["total_params"]
        print(f"{cfg.method} on {cfg.dataset} ({cfg.base_model}), seeds {cfg.seeds}: trainable {tr:,} of {tot:,} "
              f"({100 * tr / tot:.3f}%)" + (f"; FID {fid['mean']:.3f} +- {fid['std']:.3f}" if fid else ""))
        if cfg.push_to_hub:
            from ..hub import push_adapter

            url = push_adapter(out / adapter_dir, cfg.push_to_hub, private=cfg.hub_private, results=results)
            print(f"pushed to {url}")
    accelerator.wait_for_everyone()
    return results
