"""Selective methods: train a subset of the backbone's own parameters, add nothing.

All of them merge trivially (the trained tensors *are* backbone weights) and are
identity at init (nothing is added).

- ``full``          every parameter (and BatchNorm statistics). The baseline of Dutt et al. 2024.
- ``linear_probe``  the classifier head only; backbone frozen, BN statistics frozen.
- ``bitfit`` / ``bias``  every bias term + head. BitFit (Ben Zaken et al., ACL 2022) for ViTs;
  TinyTL-style bias tuning (Cai et al., NeurIPS 2020) for CNNs. On ResNet50 the only biases are
  the BatchNorm shifts (26,560) + head: 32.7K for 3 classes, as in Table 2.
- ``batchnorm``     BatchNorm affine (gamma, beta) + head. ``bn_stats="update"`` (default) lets the
  running mean/variance adapt to the new domain in ``train()`` mode and saves them with the adapter;
  ``"frozen"`` keeps the ImageNet statistics (eval-mode BN). ResNet50, 3 classes: 53,120 + 6,147
  = 59.3K (the paper reports 59.1K; the small gap is not explained by any subset of BN layers, so we
  report the exact count).
- ``attention``     weights and biases of every ViT attention block (``qkv`` and ``proj``) + head
  (Touvron et al., "Three things everyone should know about ViTs", ECCV 2022).

``full``, ``bias`` and ``attention`` also apply to the Stable Diffusion U-Net (family ``unet``, no head):
``attention`` then trains ``to_q``/``to_k``/``to_v``/``to_out.0`` of every diffusers ``Attention``
(self- and cross-attention): the projections only, which is not the paper's Table 4 "Attention" row (that
is ``attention_blocks``, the whole Transformer2D blocks; on the U-Net ``attention`` therefore has no paper row).
The U-Net-only ``norm``, ``bias_norm``, ``bias_norm_attention`` and the whole-block variants are registered in
:mod:`adapters.methods.unet`, with the SD 1.5 counts beside the paper's.
"""
from __future__ import annotations

from torch import nn

from ..core import (BN_TYPES, bias_param, family_of, freeze, is_vit_attention, merge_selective, train_head,
                   train_params, unfreeze_bn_stats)
from ..registry import Method, register
from .unet import apply_unet_attention


def _apply_full(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    for m in model.modules():
        if isinstance(m, BN_TYPES):
            unfreeze_bn_stats(m)
    return model


def _all_buffers(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_buffers()]


def _apply_linear_probe(model: nn.Module) -> nn.Module:
    freeze(model)
    train_head(model)
    return model


def _apply_bias(model: nn.Module) -> nn.Module:
    freeze(model)
    train_params(model, bias_param)
    train_head(model)
    return model


def _apply_batchnorm(model: nn.Module, bn_stats: str = "update") -> nn.Module:
    if bn_stats not in ("update", "frozen"):
        raise ValueError(f"bn_stats must be 'update' or 'frozen', not {bn_stats!r}")
    freeze(model)
    train_params(model, lambda _n, m, _p: isinstance(m, BN_TYPES))
    if bn_stats == "update":
        for m in model.modules():
            if isinstance(m, BN_TYPES):
                unfreeze_bn_stats(m)
    train_head(model)
    return model


def _bn_buffers(model: nn.Module) -> list[str]:
    if model.medpeft_hparams.get("bn_stats") != "update":
        return []
    return [f"{mn}.{bn}" for mn, m in model.named_modules() if isinstance(m, BN_TYPES)
            for bn, _ in m.named_buffers(recurse=False)]


def _apply_attention(model: nn.Module) -> nn.Module:
    if family_of(model) == "unet":  # the diffusers Attention projections (adapters.methods.unet)
        return apply_unet_attention(model)
    freeze(model)
    for name, module in model.named_modules():
        if is_vit_attention(name, module):
            for p in module.parameters():
                p.requires_grad_(True)
    train_head(model)
    return model


register(Method(
    name="full", families=("vit", "cnn", "unet"), apply=_apply_full, merge=merge_selective,
    summary="every parameter (the baseline)", paper="-", identity_at_init=True,
    saved_buffers=_all_buffers, paper_name="full"))
register(Method(
    name="linear_probe", families=("vit", "cnn"), apply=_apply_linear_probe, merge=merge_selective,
    summary="classifier head only", paper="-", identity_at_init=True, paper_name="linear_probe"))
register(Method(
    name="bitfit", families=("vit", "cnn"), apply=_apply_bias, merge=merge_selective,
    summary="all bias terms + head", paper="Ben Zaken et al., BitFit, ACL 2022",
    identity_at_init=True, paper_name="bitfit"))
register(Method(
    name="bias", families=("cnn", "vit", "unet"), apply=_apply_bias, merge=merge_selective,
    summary="all bias terms + head (TinyTL-style)", paper="Cai et al., TinyTL, NeurIPS 2020",
    identity_at_init=True, paper_name="bias"))
register(Method(
    name="batchnorm", families=("cnn",), apply=_apply_batchnorm, merge=merge_selective,
    defaults={"bn_stats": "update"}, saved_buffers=_bn_buffers,
    summary="BatchNorm affine (+ running statistics unless frozen) + head",
    paper="Frankle et al., Training BatchNorm and only BatchNorm, ICLR 2021",
    identity_at_init=True, paper_name="batchnorm"))
register(Method(
    name="attention", families=("vit", "unet"), apply=_apply_attention, merge=merge_selective,
    summary="attention blocks' weights and biases + head",
    paper="Touvron et al., Three things everyone should know about ViTs, ECCV 2022",
    identity_at_init=True, paper_name="attention", paper_families=("vit",)))
