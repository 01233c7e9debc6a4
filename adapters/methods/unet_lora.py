"""LoRA on the Stable Diffusion U-Net (the ``lora`` method's ``unet`` family; :mod:`adapters.methods.lora`
dispatches here).

LoRA (Hu et al., ICLR 2022) as in diffusers' ``train_text_to_image_lora.py``: a peft ``LoraConfig``
injected with ``unet.add_adapter(config)`` on the ``to_q``, ``to_k``, ``to_v`` and ``to_out.0``
Linears of every attention (self and cross); ``W + (alpha / rank) B A``, ``A`` gaussian, ``B`` zero,
so identity at init. Only ``lora_A``/``lora_B`` train.

Hyper-parameters are the ``lora`` method's (shared with ViT/CNN): ``rank`` (default 8), ``alpha``
(default 8; alpha/rank = 1 like diffusers' script, which uses alpha = rank), ``dropout`` and ``targets``
(``auto``/``attn``: q, k, v, out; ``qv``: q and v only). SD 1.5: rank 4 gives 797,184 trainable
parameters, exactly Dutt et al.'s 797K (use ``--lora-rank 4 --lora-alpha 4`` for Table 4); the shared
default rank 8 gives 1,594,368.

The adapter folder also holds ``pytorch_lora_weights.safetensors`` in diffusers' LoRA format, so a stock
``StableDiffusionPipeline.load_lora_weights(folder)`` loads it. Merge: peft merges ``B A`` into each
base Linear and the LoRA layers are removed (plain U-Net, exact up to fp32).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from ..core import MethodError, freeze, replace_module

DIFFUSERS_LORA_NAME = "pytorch_lora_weights.safetensors"
TARGETS = {"auto": ("to_q", "to_k", "to_v", "to_out.0"), "attn": ("to_q", "to_k", "to_v", "to_out.0"),
           "qv": ("to_q", "to_v")}


def target_names(model: nn.Module, targets: str) -> list[str]:
    from .unet import attention_projection_names

    if targets not in TARGETS:
        raise MethodError(f"LoRA targets for a U-Net: {', '.join(TARGETS)}; not {targets!r}")
    keep = TARGETS[targets]
    return [n for n in attention_projection_names(model) if n.endswith(tuple("." + k for k in keep))]


def apply(model: nn.Module, rank: int = 8, alpha: float = 8, dropout: float = 0.0, targets: str = "auto",
          use_dora: bool = False) -> nn.Module:
    from peft import LoraConfig

    if use_dora:
        raise MethodError("DoRA is not available for the U-Net")
    if getattr(model, "peft_config", None):
        raise MethodError("this U-Net already carries a LoRA adapter")
    freeze(model)
    names = target_names(model, targets)
    if not names:
        raise MethodError(f"LoRA targets={targets!r} selects no attention projection in {type(model).__name__}")
    config = LoraConfig(r=int(rank), lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                        target_modules="|".join(re.escape(n) for n in names))
    model.add_adapter(config)
    return model


def _lora_layers(model: nn.Module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """Fold ``(alpha / rank) B A`` into each base Linear and drop the LoRA layers."""
    for name, layer in _lora_layers(model):
        layer.merge()
        replace_module(model, name, layer.get_base_layer())
    for attr in ("peft_config",):
        if hasattr(model, attr):
            delattr(model, attr)
    if hasattr(model, "_hf_peft_config_loaded"):
        model._hf_peft_config_loaded = False
    return model


def diffusers_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors in diffusers' format (what ``save_lora_weights`` expects for ``unet_lora_layers``)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(model))


def export(model: nn.Module, folder: Path) -> None:
    """Write ``pytorch_lora_weights.safetensors`` (diffusers' LoRA format) for a U-Net; no-op otherwise."""
    from ..core import family_of

    if family_of(model) != "unet":
        return
    from diffusers import StableDiffusionPipeline

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in diffusers_state_dict(model).items()}
    metadata = model.peft_config["default"].to_dict()  # carries lora_alpha (scaling) for load_lora_weights
    metadata["target_modules"] = sorted(name for name, _ in _lora_layers(model))  # exact names, not a regex
    StableDiffusionPipeline.save_lora_weights(save_directory=str(folder), unet_lora_layers=state,
                                              weight_name=DIFFUSERS_LORA_NAME, safe_serialization=True,
                                              unet_lora_adapter_metadata=metadata)
