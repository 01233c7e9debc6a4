"""Stable Diffusion 1.x for MedPEFT: load a base pipeline's parts, build and sample a pipeline (with a
generation adapter applied and merged), encode prompts and images, the denoising loss, and a tiny
random pipeline for tests and demos. Shared by the generation loop (:mod:`trainer.loops.generate`)
and the app's generator (:mod:`trainer.infer.generator`).

    pipe = load_generation_pipeline("runwayml/stable-diffusion-v1-5", adapter_dir="runs/sd/adapter")
    image = sample(pipe, "Small left pleural effusion.", steps=25, seed=0)
    make_tiny_pipeline("/tmp/tiny-sd")          # a complete 32 x 32 pipeline folder, offline

``base_model`` is a Hub id of a Stable Diffusion 1.x-style pipeline (SD 1.5, RoentGen, ...) or a local
folder saved with ``save_pretrained`` (offline it must be a local folder). diffusers and transformers are
imported on first use.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adapters import get_method, merge_method

from .config import ConfigError

BASE_HINT = ("pass --base-model (base_model=) a Hugging Face Hub id of a Stable Diffusion pipeline (e.g. an SD 1.5 "
             "repo or RoentGen) or a local folder saved with save_pretrained; offline it must be a local folder")


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


def from_pretrained(cls, base: str, subfolder: str, **kwargs):
    """``cls.from_pretrained(base, subfolder=...)``; any failure becomes a :class:`GenerationError`."""
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

    from .data.tokenizer import clip_tokenizer

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
        "text_encoder": from_pretrained(CLIPTextModel, base, "text_encoder"),
        "vae": from_pretrained(AutoencoderKL, base, "vae"),
        "unet": from_pretrained(UNet2DConditionModel, base, "unet") if unet else None,
        "noise_scheduler": from_pretrained(DDPMScheduler, base, "scheduler"),
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

    from adapters.methods.unet import build_unet

    from .data.tokenizer import clip_tokenizer

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
