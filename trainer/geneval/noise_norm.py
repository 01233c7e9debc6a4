"""The noise-norm memorization score of Wen et al. (ICLR 2024, "Detecting, Explaining, and Mitigating
Memorization in Diffusion Models"), as MemControl (Dutt et al., WACV 2025) uses it.

For a prompt ``c``: start from Gaussian latents ``x_T`` (seeded), follow the sampler with classifier-free
guidance, and average over the first ``steps`` steps the magnitude of the text-conditional part of the
noise prediction, ``|| eps(x_t, c) - eps(x_t, empty) ||_2`` (over every latent element). Memorized
prompts drive generation toward one image from the first step, so their norm is large; a model that
memorizes its training prompts gives them larger norms than held-out prompts.

Differences from the official code: the norm is averaged over ``generations`` seeds per prompt and over
the first ``steps`` of this run's own sampler (Wen et al. average over the whole trajectory of DDIM-50 and
also show that the first step alone detects memorization).
"""
from __future__ import annotations

from typing import Sequence

import torch


@torch.no_grad()
def noise_norms(pipe, prompts: Sequence[str], steps: int = 5, guidance: float = 7.5, generations: int = 2,
                seed: int = 0, resolution: int | None = None, batch_size: int = 8) -> list[float]:
    """The mean noise-norm of each prompt (a diffusers StableDiffusionPipeline ``pipe``)."""
    from ..diffusion import encode_prompts

    unet, scheduler = pipe.unet, type(pipe.scheduler).from_config(pipe.scheduler.config)
    device = unet.device
    dtype = next(unet.parameters()).dtype
    size = (resolution or unet.config.sample_size * pipe.vae_scale_factor) // pipe.vae_scale_factor
    empty = encode_prompts(pipe.tokenizer, pipe.text_encoder, [""]).to(device, dtype)
    out: list[float] = []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i:i + batch_size])
        cond = encode_prompts(pipe.tokenizer, pipe.text_encoder, chunk).to(device, dtype)
        totals = torch.zeros(len(chunk), dtype=torch.float64)
        for g in range(generations):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + i * 101 + g)
            x = torch.randn((len(chunk), unet.config.in_channels, size, size), generator=gen).to(device, dtype)
            scheduler.set_timesteps(max(steps, 1), device=device)
            x = x * scheduler.init_noise_sigma
            norms = []
            for t in scheduler.timesteps[:steps]:
                inp = scheduler.scale_model_input(torch.cat([x, x]), t)
                hidden = torch.cat([cond, empty.expand(len(chunk), -1, -1)])
                eps_c, eps_u = unet(inp, t, encoder_hidden_states=hidden).sample.chunk(2)
                diff = (eps_c - eps_u).float()
                norms.append(diff.flatten(1).norm(dim=1).double().cpu())
                x = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample
            totals += torch.stack(norms).mean(0)
        out += (totals / generations).tolist()
    return out


def noise_norm_report(pipe, train_prompts: Sequence[str], heldout_prompts: Sequence[str], **kwargs) -> dict:
    """Mean noise-norm on training and on held-out prompts, and their ratio (> 1: the training prompts
    pull harder, a sign of memorization)."""
    train = noise_norms(pipe, train_prompts, **kwargs) if train_prompts else []
    held = noise_norms(pipe, heldout_prompts, **kwargs) if heldout_prompts else []
    mean = lambda v: float(sum(v) / len(v)) if v else None  # noqa: E731
    out = {"train": mean(train), "heldout": mean(held), "n_train_prompts": len(train), "n_heldout_prompts": len(held)}
    out["ratio"] = out["train"] / out["heldout"] if out["train"] is not None and out["heldout"] else None
    return out
