"""The Stable Diffusion U-Net as a MedPEFT backbone (family ``unet``), and its selective methods.

Dutt et al. 2024, Section 4.3 / Table 4: fine-tune parts of the Stable Diffusion U-Net on MIMIC-CXR
report/image pairs (text encoder and VAE frozen) and measure FID.

:func:`build_unet` makes a ``diffusers.UNet2DConditionModel`` from a spec:

- ``tiny``  a tiny random U-Net for tests and demos (:data:`TINY_UNET_CONFIG`, 792,964 parameters);
- ``sd15``  Stable Diffusion 1.5's U-Net architecture (:data:`SD15_UNET_CONFIG`, its published
  ``unet/config.json``) with *empty* (meta-device) weights by default: enough to count parameters;
- a local pipeline / U-Net folder or a Hub id (e.g. an SD 1.5-style repo, RoentGen): the U-Net is
  built from its ``config.json`` only (meta weights, nothing but the config is read). Use
  ``UNet2DConditionModel.from_pretrained(..., subfolder="unet")`` for real weights.

Methods for the U-Net (``python -m adapters list --unet sd15``). Selective methods train a subset of the
U-Net's own tensors, add nothing, are identity at init and merge trivially (the trained tensors *are*
the U-Net's weights):

========================== ====================================================== ============ =========
method                     what trains                                            SD 1.5 U-Net paper
========================== ====================================================== ============ =========
full                       every parameter                                         859,520,964  85.9M (*)
attention_blocks           every parameter of every ``Transformer2DModel`` block   267,239,360  26.7M (*)
                           (the U-Net's ``attentions`` submodules: GroupNorm,
                           proj_in, self- and cross-attention, feed-forward,
                           block LayerNorms, proj_out): the paper's "Attention"
bias_norm_attention_blocks bias + norm + ``attention_blocks``: the paper's         267,421,124  26.7M (*)
                           "Bias+Norm+Attention"
attention                  ``to_q``/``to_k``/``to_v``/``to_out.0`` (weight + bias)  93,536,640  -
                           of every diffusers ``Attention`` (self ``attn1`` and
                           cross ``attn2``): the projections only
bias                       every bias (convs, linears, norms)                          343,684  343K
norm                       GroupNorm + LayerNorm affine (weight + bias)                200,320  200K
bias_norm                  bias + norm                                                 443,844  443K
bias_norm_attention        bias + norm + attention projections                      93,955,524  -
lora                       rank-r A/B on the attention projections                   1,594,368  797K
                           (adapters.methods.unet_lora; r=8, the shared ``lora``
                           default); r=4: 797,184 = paper
svdiff                     spectral shifts of every Linear/Conv2d (adapters.methods.svdiff)    222,696  21.4K (+)
difffit                    bias + norm + per-channel gammas (adapters.methods.difffit)         481,284  -
========================== ====================================================== ============ =========

(*) The paper's M-counts are 10x too small (a decimal slip; its K-counts are right): SD 1.5's U-Net
has 859.5M parameters (the paper prints 85.9M), and 26.7M x 10 = 267.2M is exactly the size of all
16 ``Transformer2DModel`` blocks (267,239,360; with every other bias and norm 267,421,124, "26.7M"
again for Bias+Norm+Attention). So the paper's "Attention" rows tuned the whole transformer blocks:
``attention_blocks`` and ``bias_norm_attention_blocks`` are those rows here (their ``paper_name``, and
the methods of ``benchmarks/table4_generation.yaml``). ``attention`` / ``bias_norm_attention`` keep the
projections-only variant (93.5M), which is no row of Table 4.
The small counts (bias, norm, bias_norm, LoRA r=4) match the paper exactly.
(+) No natural subset of SD 1.5's layers gives 21.4K spectral shifts (the cross-attention k/v give
18,816; all attention projections 93,696; every Linear + Conv2d 222,696, the SVDiff paper's choice).

Counts: ``python -m adapters list --unet sd15`` (asserted in ``tests/adapters/test_unet_counts.py``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbones import BackboneError
from ..core import bias_param, freeze, merge_selective, train_modules, train_params
from ..registry import Method, register

NORM_TYPES_UNET = (nn.GroupNorm, nn.LayerNorm)

TINY_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8,
)
"""A tiny U-Net with the SD block structure (cross-attention down/up blocks, a cross-attention mid block)."""

SD15_UNET_CONFIG: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
    center_input_sample=False, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1,
)
"""Stable Diffusion v1.5 ``unet/config.json`` (859,520,964 parameters)."""


def build_unet(spec: str, *, empty: bool | None = None, seed: int = 0):
    """A ``UNet2DConditionModel`` from ``tiny``, ``sd15``, a local folder or a Hub id.

    ``empty``: build on the meta device (no memory, no weights; for counting parameters). Default:
    ``False`` for ``tiny`` (random weights from ``seed``), ``True`` otherwise. Only ``config.json`` of a
    folder / Hub repo is read (``<spec>/unet/config.json``, or ``<spec>/config.json`` for a U-Net folder).
    """
    from diffusers import UNet2DConditionModel

    spec = str(spec).strip()
    if spec == "tiny":
        config, empty = dict(TINY_UNET_CONFIG), bool(empty)
    elif spec == "sd15":
        config, empty = dict(SD15_UNET_CONFIG), True if empty is None else empty
    else:
        config, empty = unet_config(spec), True if empty is None else empty
    if empty:
        from accelerate import init_empty_weights

        with init_empty_weights():
            return UNet2DConditionModel.from_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel.from_config(config)


def unet_config(spec: str) -> dict[str, Any]:
    """The U-Net config of a pipeline folder, U-Net folder or Hub id; a clear error otherwise."""
    from diffusers import UNet2DConditionModel

    path = Path(spec).expanduser()
    if path.is_dir():
        for sub in ("unet", None):
            if (path / (sub or "") / "config.json").is_file():
                return dict(UNet2DConditionModel.load_config(str(path), subfolder=sub))
        raise BackboneError(f"{spec} holds no U-Net config: expected {path / 'unet' / 'config.json'} (a diffusers "
                            "pipeline folder) or config.json (a U-Net folder)")
    if spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") != 1:
        raise BackboneError(f"U-Net spec {spec!r}: no such folder. Give tiny, sd15, a local diffusers pipeline "
                            "folder or a Hugging Face Hub id (owner/name)")
    try:
        return dict(UNet2DConditionModel.load_config(spec, subfolder="unet"))
    except Exception as e:  # offline, unknown repo, no unet subfolder
        raise BackboneError(f"cannot read the U-Net config of {spec!r} ({type(e).__name__}: {e}). Give tiny, sd15, "
                            "a local diffusers pipeline folder, or a Hub id of a Stable Diffusion pipeline "
                            "(offline, only local folders and the Hub cache work)") from None


# ------------------------------------------------------------------------------------ selection
def is_attention_module(module: nn.Module) -> bool:
    """A diffusers ``Attention`` (self- or cross-attention of a transformer block)."""
    try:
        from diffusers.models.attention_processor import Attention
    except ImportError:  # pragma: no cover - diffusers is required for U-Nets
        return False
    return isinstance(module, Attention)


def attention_projection_names(model: nn.Module) -> list[str]:
    """Full names of the ``to_q``, ``to_k``, ``to_v`` and ``to_out.0`` Linears of every ``Attention``."""
    names = []
    for name, module in model.named_modules():
        if is_attention_module(module):
            for child in ("to_q", "to_k", "to_v", "to_out.0"):
                sub = module.get_submodule(child)
                if isinstance(sub, nn.Linear):
                    names.append(f"{name}.{child}")
    return names


def train_attention_projections(model: nn.Module) -> int:
    """Switch on the weights and biases of every attention projection; returns how many tensors."""
    return train_modules(model, attention_projection_names(model))


def is_transformer_block(module: nn.Module) -> bool:
    """A diffusers ``Transformer2DModel`` (the ``attentions.N`` blocks of SD's cross-attention U-Net blocks)."""
    try:
        from diffusers.models.transformers.transformer_2d import Transformer2DModel
    except ImportError:  # pragma: no cover - diffusers is required for U-Nets
        return False
    return isinstance(module, Transformer2DModel)


def transformer_block_names(model: nn.Module) -> list[str]:
    """Full names of the outermost ``Transformer2DModel`` blocks."""
    names: list[str] = []
    for name, module in model.named_modules():
        if is_transformer_block(module) and not any(name.startswith(n + ".") for n in names):
            names.append(name)
    return names


def train_transformer_blocks(model: nn.Module) -> int:
    """Switch on every parameter of every ``Transformer2DModel`` block; returns how many tensors."""
    return train_modules(model, transformer_block_names(model))


def norm_param(_m: str, module: nn.Module, _p: str) -> bool:
    return isinstance(module, NORM_TYPES_UNET)


def _apply_norm(model: nn.Module) -> nn.Module:
    freeze(model)
    train_params(model, norm_param)
    return model


def _apply_bias_norm(model: nn.Module) -> nn.Module:
    freeze(model)
    train_params(model, lambda m, mod, p: bias_param(m, mod, p) or norm_param(m, mod, p))
    return model


def _apply_bias_norm_attention(model: nn.Module) -> nn.Module:
    _apply_bias_norm(model)
    train_attention_projections(model)
    return model


def _apply_attention_blocks(model: nn.Module) -> nn.Module:
    freeze(model)
    train_transformer_blocks(model)
    return model


def _apply_bias_norm_attention_blocks(model: nn.Module) -> nn.Module:
    _apply_bias_norm(model)
    train_transformer_blocks(model)
    return model


def apply_unet_attention(model: nn.Module) -> nn.Module:
    """``attention`` on a U-Net (called by :mod:`adapters.methods.selective`)."""
    freeze(model)
    train_attention_projections(model)
    return model


register(Method(
    name="norm", families=("unet",), apply=_apply_norm, merge=merge_selective,
    summary="GroupNorm/LayerNorm affine parameters", paper="Dutt et al., MIDL 2024 (Table 4)",
    identity_at_init=True, paper_name="norm"))
register(Method(
    name="bias_norm", families=("unet",), apply=_apply_bias_norm, merge=merge_selective,
    summary="every bias + GroupNorm/LayerNorm affine", paper="Dutt et al., MIDL 2024 (Table 4)",
    identity_at_init=True, paper_name="bias_norm"))
register(Method(
    name="bias_norm_attention", families=("unet",), apply=_apply_bias_norm_attention, merge=merge_selective,
    summary="biases + norms + attention projections (q, k, v, out)", paper="Dutt et al., MIDL 2024 (Table 4)",
    identity_at_init=True, paper_name=None))
register(Method(
    name="attention_blocks", families=("unet",), apply=_apply_attention_blocks, merge=merge_selective,
    summary="every parameter of the Transformer2D blocks (the paper's Attention row)",
    paper="Dutt et al., MIDL 2024 (Table 4)", identity_at_init=True, paper_name="attention"))
register(Method(
    name="bias_norm_attention_blocks", families=("unet",), apply=_apply_bias_norm_attention_blocks,
    merge=merge_selective, summary="biases + norms + whole Transformer2D blocks (the paper's Bias+Norm+Attention row)",
    paper="Dutt et al., MIDL 2024 (Table 4)", identity_at_init=True, paper_name="bias_norm_attention"))
