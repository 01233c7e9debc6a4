"""LoRA and DoRA through peft, on ViT attention/MLP Linears and on CNN convolutions.

- ``lora``  LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022): each
  targeted layer ``W`` becomes ``W + (alpha / rank) * B @ A``; only ``A`` and ``B`` train (+ head).
  ``A`` is kaiming-uniform, ``B`` is zero, so the model is the base model at init.
- ``dora``  DoRA (Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", ICML 2024): LoRA on the
  direction of ``W`` plus a trained per-output magnitude vector (initialised to ``||W||``, so identity
  at init too). Not in Dutt et al. 2024 (it postdates the paper).

Both use peft (``LoraConfig`` + ``get_peft_model``); the head is peft's ``modules_to_save``, so the
adapter folder is a plain peft folder. Both merge with peft's ``merge_and_unload()``.

Hyper-parameters: ``rank=8``, ``alpha=8`` (peft ``lora_alpha``; scaling alpha/rank = 1),
``dropout=0.0`` (on the LoRA branch input) and ``targets``:

=============  =======================================================================================
``auto``       (default) ``qv`` on a ViT, ``conv`` on a CNN
``qv``         (ViT) W_q and W_v only, as the LoRA paper (Sec. 7.1), Dutt et al. 2024 and MED-PEFT do.
               timm fuses q, k, v into one Linear, so each ``attn.qkv`` is first split
               (:func:`split_qkv`) into a :class:`SplitQKV` holding separate ``q``, ``k``, ``v`` Linears
               (same outputs); LoRA goes on ``qkv.q`` and ``qkv.v``. Plain ``PeftModel.from_pretrained``
               then needs a base with the same split: ``PeftModel.from_pretrained(split_qkv(timm_model),
               folder)``. Merging re-fuses each split into a plain ``qkv`` Linear (:func:`fuse_qkv`): the
               merged model is plain timm.
``qkv``        (ViT) every ``blocks.*.attn.qkv`` (timm's fused q/k/v Linear, one factorisation across q, k
               and v; the default before issue 12): a peft folder that loads with plain
               ``PeftModel.from_pretrained(timm_model, folder)``
``attn``       (ViT) ``qkv`` and ``attn.proj``
``all_linear`` (ViT) every Linear inside ``blocks`` (qkv, proj, mlp fc1/fc2)
``conv``       (CNN) the convolutions of every stage: every ungrouped spatial Conv2d (kernel > 1x1: the
               stem, ResNet's/DenseNet's 3x3s, ConvNeXt's downsampling) and, in a network whose blocks
               are built around grouped/depthwise convolutions (EfficientNet, MobileNet, ConvNeXt,
               ResNeXt, RegNet), every ungrouped pointwise 1x1 Conv2d as well (expand/project convs,
               ConvNeXt's conv-MLP, the pre-logits ``conv_head``). Squeeze-excitation gates are not
               targeted. On ResNet50 the same layers as before issue 12 (stem + every 3x3).
``spatial``    (CNN) every ungrouped Conv2d with a kernel larger than 1x1 only (the ``conv`` rule before
               issue 12; on EfficientNet/MobileNet that is the stem alone)
``all_conv``   (CNN) every ungrouped Conv2d (1x1 too, squeeze-excitation gates included)
=============  =======================================================================================

``depthwise=False``: with ``depthwise=True`` (CNN) LoRA also goes on every depthwise Conv2d
(``groups == in_channels``, e.g. EfficientNet's ``conv_dw``). peft's own conv LoRA cannot factorise a
depthwise kernel (it needs ``rank % groups == 0`` and cannot merge grouped convs), so these get
:class:`DepthwiseLoRA` (:mod:`adapters.methods.lora_depthwise`): ``dW = B @ A`` over each channel's ``k x k``
taps, ``B`` ``[C, r]`` zero-initialised, merged exactly into the kernel. Other grouped convs (ResNeXt's
``groups=32`` 3x3s) are never targeted.

Modules are selected by type (:func:`adapters.core.modules_of_type`, timm attention blocks by
:func:`adapters.core.is_vit_attention`) and handed to peft as one regular expression of exact full
module names (peft fully matches a string; a list would also match every name that merely *ends*
with an entry, e.g. ResNet's stem ``conv1`` would pull in every ``layerN.M.conv1``).
"""
from __future__ import annotations

import re

import torch
from torch import nn

from . import lora_depthwise, lora_init, unet_lora
from ..core import (MethodError, family_of, freeze, head_name, is_depthwise_conv, is_vit_attention, modules_of_type,
                   unwrap)
from ..registry import Method, register

VIT_TARGETS = ("qv", "qkv", "attn", "all_linear")
CNN_TARGETS = ("conv", "spatial", "all_conv")
SE_TYPES = {"SqueezeExcite", "SqueezeExciteCl", "SEModule", "EffectiveSEModule", "SEBlock"}
"""Type names of timm's squeeze-excitation gates (their 1x1 convs are not block convolutions)."""


class SplitQKV(nn.Module):
    """timm's fused ``qkv`` Linear as three Linears ``q``, ``k``, ``v``; the output is their
    concatenation, i.e. exactly the fused layer's output layout (rows ``[q; k; v]``)."""

    def __init__(self, q: nn.Linear, k: nn.Linear, v: nn.Linear):
        super().__init__()
        self.q, self.k, self.v = q, k, v

    @classmethod
    @torch.no_grad()
    def from_fused(cls, qkv: nn.Linear) -> "SplitQKV":
        if qkv.out_features % 3:
            raise MethodError(f"qkv Linear with {qkv.out_features} outputs cannot be split in three")
        d = qkv.out_features // 3
        parts = []
        for i in range(3):
            lin = nn.Linear(qkv.in_features, d, bias=qkv.bias is not None,
                            device=qkv.weight.device, dtype=qkv.weight.dtype)
            lin.weight.copy_(qkv.weight[i * d:(i + 1) * d])
            if qkv.bias is not None:
                lin.bias.copy_(qkv.bias[i * d:(i + 1) * d])
            lin.weight.requires_grad_(qkv.weight.requires_grad)
            if qkv.bias is not None:
                lin.bias.requires_grad_(qkv.bias.requires_grad)
            parts.append(lin)
        return cls(*parts)

    @torch.no_grad()
    def fused(self) -> nn.Linear:
        q, k, v = self.q, self.k, self.v
        out = nn.Linear(q.in_features, q.out_features * 3, bias=q.bias is not None,
                        device=q.weight.device, dtype=q.weight.dtype)
        out.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
        if q.bias is not None:
            out.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


def _attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if is_vit_attention(n, m)]


def split_qkv(model: nn.Module) -> nn.Module:
    """Replace every ViT ``attn.qkv`` Linear by a :class:`SplitQKV` (same outputs); in place, returns
    the model. Idempotent. Needed before ``PeftModel.from_pretrained`` of a ``targets="qv"`` folder."""
    for _, attn in _attention_modules(unwrap(model)):
        if isinstance(attn.qkv, nn.Linear):
            attn.qkv = SplitQKV.from_fused(attn.qkv)
    return model


def fuse_qkv(model: nn.Module) -> nn.Module:
    """Undo :func:`split_qkv`: every :class:`SplitQKV` becomes one plain ``nn.Linear`` again."""
    for _, attn in _attention_modules(unwrap(model)):
        if isinstance(attn.qkv, SplitQKV):
            attn.qkv = attn.qkv.fused()
    return model


def target_names(model: nn.Module, targets: str) -> list[str]:
    """Full names of the modules LoRA goes on (``qv`` expects :func:`split_qkv` done already)."""
    family = family_of(model)
    head = head_name(model)
    exclude = [head] if head else []
    if family == "vit":
        if targets not in VIT_TARGETS:
            raise MethodError(f"LoRA targets for a ViT: {', '.join(('auto',) + VIT_TARGETS)}; not {targets!r}")
        attns = _attention_modules(model)
        if targets == "qkv":
            return [f"{n}.qkv" for n, a in attns if isinstance(a.qkv, nn.Linear)]
        if targets == "qv":
            return [f"{n}.qkv.{p}" for n, a in attns if isinstance(a.qkv, SplitQKV) for p in ("q", "v")]
        if targets == "attn":
            return [f"{n}.{c}" for n, a in attns for c in ("qkv", "proj") if isinstance(getattr(a, c), nn.Linear)]
        return ["blocks." + n for n in modules_of_type(model.blocks, nn.Linear)]
    if family == "cnn":
        if targets not in CNN_TARGETS:
            raise MethodError(f"LoRA targets for a CNN: {', '.join(('auto',) + CNN_TARGETS)}; not {targets!r}")
        return cnn_target_names(model, targets, exclude)
    raise MethodError(f"LoRA/DoRA: unsupported backbone family {family!r}")


def in_squeeze_excite(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    return any(type(model.get_submodule(".".join(parts[:i]))).__name__ in SE_TYPES for i in range(1, len(parts)))


def cnn_target_names(model: nn.Module, targets: str, exclude: list[str]) -> list[str]:
    """The ungrouped Conv2d layers LoRA goes on in a CNN (see the module docstring); grouped convs are
    never among them (peft cannot merge, or unless ``rank % groups == 0`` even build, LoRA on them)."""
    convs = [(n, model.get_submodule(n)) for n in modules_of_type(model, nn.Conv2d, exclude=exclude)]
    ungrouped = [(n, c) for n, c in convs if c.groups == 1]
    if targets == "all_conv":
        return [n for n, _ in ungrouped]
    spatial = [n for n, c in ungrouped if tuple(c.kernel_size) != (1, 1)]
    if targets == "spatial" or not any(c.groups > 1 and tuple(c.kernel_size) != (1, 1) for _, c in convs):
        return spatial
    return [n for n, c in ungrouped if n in spatial or not in_squeeze_excite(model, n)]


def depthwise_names(model: nn.Module, exclude: list[str]) -> list[str]:
    """Every depthwise Conv2d (``groups == in_channels > 1``)."""
    return [n for n in modules_of_type(model, nn.Conv2d, exclude=exclude) if is_depthwise_conv(model.get_submodule(n))]


def exact_names_regex(names: list[str]) -> str:
    """A peft ``target_modules`` string that fully matches exactly these module names."""
    return "|".join(re.escape(n) for n in names)


def wrap_with_peft(model: nn.Module, config_cls, custom_modules: dict | None = None, **config_kwargs) -> nn.Module:
    """``get_peft_model(model, config_cls(**config_kwargs))`` with the head as ``modules_to_save``
    (trained as peft's copy, and saved). Checks that peft wrapped the head only: it matches
    ``modules_to_save`` by name suffix. ``custom_modules``: peft custom LoRA layers by base-layer type."""
    from peft import get_peft_model
    from peft.utils import ModulesToSaveWrapper

    head = head_name(model)
    expected = [head] if head else []
    config = config_cls(modules_to_save=expected or None, **config_kwargs)
    if custom_modules:
        config._register_custom_module(custom_modules)  # peft's (experimental) public hook for custom layers
    peft_model = get_peft_model(model, config)
    saved = [n for n, m in unwrap(peft_model).named_modules() if isinstance(m, ModulesToSaveWrapper)]
    if saved != expected:
        raise MethodError(f"peft modules_to_save={expected} wrapped {saved}, expected the head only")
    return peft_model


def _apply_lora(model: nn.Module, rank: int = 8, alpha: float = 8, dropout: float = 0.0, targets: str = "auto",
                depthwise: bool = False, use_dora: bool = False, init: str = "default",
                rslora: bool = False) -> nn.Module:
    from peft import LoraConfig

    family = family_of(model)
    init_kw = lora_init.config_kwargs(init, rslora, family)
    if depthwise and family != "cnn":
        raise MethodError(f"LoRA depthwise=True is for CNNs with depthwise convolutions, not a {family} backbone")
    if family == "unet":  # Stable Diffusion U-Net: diffusers' add_adapter (adapters.methods.unet_lora)
        if init != "default" or rslora:
            raise MethodError("LoRA init/rslora options are for classification backbones; the U-Net LoRA uses "
                              "diffusers' gaussian init")
        return unet_lora.apply(model, rank=rank, alpha=alpha, dropout=dropout, targets=targets, use_dora=use_dora)
    if targets == "auto":
        targets = "qv" if family == "vit" else "conv"
    model.medpeft_resolved = {"targets": targets}  # recorded as used
    freeze(model)  # BatchNorm pinned to eval mode; peft then freezes all but LoRA and the head copy
    if targets == "qv":
        split_qkv(model)
    names = target_names(model, targets)
    custom = None
    if depthwise:
        head = head_name(model)
        dw = depthwise_names(model, [head] if head else [])
        if not dw:
            raise MethodError(f"LoRA depthwise=True: {type(model).__name__} has no depthwise convolution")
        for n in dw:
            lora_depthwise.mark_depthwise(model.get_submodule(n))
        names, custom = names + dw, {lora_depthwise.DepthwiseMarker: lora_depthwise.lora_layer_class()}
    if not names:
        raise MethodError(f"LoRA targets={targets!r} selects no module in {type(model).__name__}")
    # The head trains as peft's modules_to_save copy (core.train_head would also unfreeze the frozen
    # original that peft keeps beside it).
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, use_dora=use_dora,
                        target_modules=exact_names_regex(names), bias="none", **init_kw)
    lora_init.before_wrap(model, config)
    peft_model = wrap_with_peft(model, LoraConfig, custom_modules=custom, r=rank, lora_alpha=alpha,
                                lora_dropout=dropout, use_dora=use_dora, target_modules=exact_names_regex(names),
                                bias="none", **init_kw)
    lora_init.after_wrap(peft_model, peft_model.peft_config["default"], init)
    return peft_model


def _apply_dora(model: nn.Module, **hp) -> nn.Module:
    return _apply_lora(model, use_dora=True, **hp)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold ``B @ A`` (and DoRA's magnitude) into the weights; re-fuse split q/k/v."""
    if family_of(model) == "unet":
        return unet_lora.merge(model)
    return lora_depthwise.unmark_all(fuse_qkv(model.merge_and_unload()))


_DEFAULTS = {"rank": 8, "alpha": 8, "dropout": 0.0, "targets": "auto", "init": "default", "rslora": False}

register(Method(
    name="lora", families=("vit", "cnn", "unet"), apply=_apply_lora, merge=merge_lora,
    defaults={**_DEFAULTS, "depthwise": False},
    export=unet_lora.export, saved_buffers=lora_init.init_buffers, after_load=lora_init.restore_residual,
    summary="low-rank updates of W_q, W_v (ViT) / every stage's convolutions (CNN) + head",
    paper="Hu et al., LoRA, ICLR 2022", peft=True, identity_at_init=True, paper_name="lora"))
register(Method(
    name="dora", families=("vit", "cnn"), apply=_apply_dora, merge=merge_lora, defaults=dict(_DEFAULTS),
    saved_buffers=lora_init.init_buffers, after_load=lora_init.restore_residual,
    summary="weight-decomposed low-rank updates (magnitude + LoRA direction) + head",
    paper="Liu et al., DoRA, ICML 2024", peft=True, identity_at_init=True, paper_name=None))
