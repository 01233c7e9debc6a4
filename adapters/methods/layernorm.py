"""LayerNorm tuning: train the affine parameters (gamma, beta) of every LayerNorm + head.

One of the ViT methods of Dutt et al. 2024; implemented with peft's LN tuning (``LNTuningConfig``,
after Zhao et al., "Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM Fine-Tuning",
ICLR 2024). No hyper-parameters.

peft's LN tuning wraps each targeted LayerNorm in an ``LNTuningLayer`` that keeps the frozen
original as ``base_layer`` and trains a copy in ``ln_tuning_layers.default``: the trainable tensors
are those copies (+ the head, as ``modules_to_save``), identity at init (the copy equals the
original). Merging (``merge_and_unload``) puts the trained copy in the original's place: the merged
model is the plain timm model.

Targets are the *real* ``nn.LayerNorm`` modules, selected by type and handed to peft as exact
names: timm keeps ``nn.Identity`` placeholders with norm-like names (``norm_pre``, ``fc_norm``,
``attn.q_norm``/``k_norm``) that a name pattern would wrongly catch.
"""
from __future__ import annotations

import warnings

from torch import nn

from ..core import MethodError, freeze, head_name, modules_of_type, replace_module
from .lora import exact_names_regex, wrap_with_peft
from ..registry import Method, register


def layernorm_names(model: nn.Module) -> list[str]:
    """Full names of every real LayerNorm (``nn.LayerNorm`` or a subclass), head excluded."""
    head = head_name(model)
    return modules_of_type(model, nn.LayerNorm, exclude=[head] if head else [])


def _apply_layernorm(model: nn.Module) -> nn.Module:
    from peft import LNTuningConfig

    freeze(model)
    names = layernorm_names(model)
    if not names:
        raise MethodError(f"{type(model).__name__} has no nn.LayerNorm to tune")
    with warnings.catch_warnings():  # peft warns on timm's LayerNorm subclass; it only reads its shape
        warnings.filterwarnings("ignore", message="Unsupported layer type", category=UserWarning)
        return wrap_with_peft(model, LNTuningConfig, target_modules=exact_names_regex(names))


def _merge_layernorm(model: nn.Module) -> nn.Module:
    """peft's LN-tuning ``merge_and_unload`` swaps the trained copies in but leaves the head inside
    its ``ModulesToSaveWrapper``: unwrap it to the trained head copy too."""
    from peft.utils import ModulesToSaveWrapper

    merged = model.merge_and_unload()
    for name, module in list(merged.named_modules()):
        if isinstance(module, ModulesToSaveWrapper):
            replace_module(merged, name, module.modules_to_save[module.active_adapters[0]])
    return merged


register(Method(
    name="layernorm", families=("vit",), apply=_apply_layernorm, merge=_merge_layernorm,
    summary="LayerNorm affine parameters + head",
    paper="Zhao et al., Tuning LayerNorm in Attention, ICLR 2024 (peft LN tuning)",
    peft=True, identity_at_init=True, paper_name="layernorm"))
