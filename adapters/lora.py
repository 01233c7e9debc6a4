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
``auto``       (default) ``qkv`` on a ViT, ``conv`` on a CNN
``qkv``        every ``blocks.*.attn.qkv`` (timm's fused q/k/v Linear): a peft folder that loads with
               plain ``PeftModel.from_pretrained(timm_model, folder)``
``qv``         q and v only, as in the LoRA paper. timm fuses q, k, v into one Linear, so each
               ``attn.qkv`` is first split (:func:`split_qkv`) into a :class:`SplitQKV` holding
               separate ``q``, ``k``, ``v`` Linears (same outputs); LoRA goes on ``qkv.q`` and
               ``qkv.v``. Plain ``PeftModel.from_pretrained`` then needs a base with the same split:
               ``PeftModel.from_pretrained(split_qkv(timm_model), folder)``. Merging re-fuses each
               split into a plain ``qkv`` Linear (:func:`fuse_qkv`): the merged model is plain timm.
``attn``       ``qkv`` and ``attn.proj``
``all_linear`` every Linear inside ``blocks`` (qkv, proj, mlp fc1/fc2)
``conv``       (CNN) every ungrouped Conv2d with a kernel larger than 1x1 (stem, 3x3 convs)
``all_conv``   (CNN) every ungrouped Conv2d (1x1 too)
=============  =======================================================================================

Grouped/depthwise convolutions (``groups > 1``, e.g. EfficientNet's depthwise 3x3) are never targeted:
peft refuses them unless ``rank`` is divisible by ``groups`` and cannot merge them.

Modules are selected by type (:func:`adapters.core.modules_of_type`, timm attention blocks by
:func:`adapters.core.is_vit_attention`) and handed to peft as one regular expression of exact full
module names (peft fully matches a string; a list would also match every name that merely *ends*
with an entry, e.g. ResNet's stem ``conv1`` would pull in every ``layerN.M.conv1``).
"""
from __future__ import annotations

import re

import torch
from torch import nn

from . import unet_lora
from .core import MethodError, family_of, freeze, head_name, is_vit_attention, modules_of_type, unwrap
from .registry import Method, register

VIT_TARGETS = ("qkv", "qv", "attn", "all_linear")
CNN_TARGETS = ("conv", "all_conv")


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
        # peft cannot merge (or, unless rank % groups == 0, even build) LoRA on grouped convs.
        convs = [n for n in modules_of_type(model, nn.Conv2d, exclude=exclude) if model.get_submodule(n).groups == 1]
        if targets == "conv":
            convs = [n for n in convs if tuple(model.get_submodule(n).kernel_size) != (1, 1)]
        return convs
    raise MethodError(f"LoRA/DoRA: unsupported backbone family {family!r}")


def exact_names_regex(names: list[str]) -> str:
    """A peft ``target_modules`` string that fully matches exactly these module names."""
    return "|".join(re.escape(n) for n in names)


def wrap_with_peft(model: nn.Module, config_cls, **config_kwargs) -> nn.Module:
    """``get_peft_model(model, config_cls(**config_kwargs))`` with the head as ``modules_to_save``
    (trained as peft's copy, and saved). Checks that peft wrapped the head only: it matches
    ``modules_to_save`` by name suffix."""
    from peft import get_peft_model
    from peft.utils import ModulesToSaveWrapper

    head = head_name(model)
    expected = [head] if head else []
    peft_model = get_peft_model(model, config_cls(modules_to_save=expected or None, **config_kwargs))
    saved = [n for n, m in unwrap(peft_model).named_modules() if isinstance(m, ModulesToSaveWrapper)]
    if saved != expected:
        raise MethodError(f"peft modules_to_save={expected} wrapped {saved}, expected the head only")
    return peft_model


def _apply_lora(model: nn.Module, rank: int = 8, alpha: float = 8, dropout: float = 0.0, targets: str = "auto",
                use_dora: bool = False) -> nn.Module:
    from peft import LoraConfig

    family = family_of(model)
    if family == "unet":  # Stable Diffusion U-Net: diffusers' add_adapter (adapters.unet_lora)
        return unet_lora.apply(model, rank=rank, alpha=alpha, dropout=dropout, targets=targets, use_dora=use_dora)
    if targets == "auto":
        targets = "qkv" if family == "vit" else "conv"
    freeze(model)  # BatchNorm pinned to eval mode; peft then freezes all but LoRA and the head copy
    if targets == "qv":
        split_qkv(model)
    names = target_names(model, targets)
    if not names:
        raise MethodError(f"LoRA targets={targets!r} selects no module in {type(model).__name__}")
    # The head trains as peft's modules_to_save copy (core.train_head would also unfreeze the frozen
    # original that peft keeps beside it).
    return wrap_with_peft(model, LoraConfig, r=rank, lora_alpha=alpha, lora_dropout=dropout, use_dora=use_dora,
                          target_modules=exact_names_regex(names), bias="none")


def _apply_dora(model: nn.Module, **hp) -> nn.Module:
    return _apply_lora(model, use_dora=True, **hp)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold ``B @ A`` (and DoRA's magnitude) into the weights; re-fuse split q/k/v."""
    if family_of(model) == "unet":
        return unet_lora.merge(model)
    return fuse_qkv(model.merge_and_unload())


_DEFAULTS = {"rank": 8, "alpha": 8, "dropout": 0.0, "targets": "auto"}

register(Method(
    name="lora", families=("vit", "cnn", "unet"), apply=_apply_lora, merge=merge_lora, defaults=dict(_DEFAULTS),
    export=unet_lora.export,
    summary="low-rank updates of attention qkv (ViT) / k>1 convolutions (CNN) + head",
    paper="Hu et al., LoRA, ICLR 2022", peft=True, identity_at_init=True, paper_name="lora"))
register(Method(
    name="dora", families=("vit", "cnn"), apply=_apply_dora, merge=merge_lora, defaults=dict(_DEFAULTS),
    summary="weight-decomposed low-rank updates (magnitude + LoRA direction) + head",
    paper="Liu et al., DoRA, ICML 2024", peft=True, identity_at_init=True, paper_name=None))
