"""The registry of PEFT methods: name -> :class:`Method`.

A method module registers itself with :func:`register`; :func:`apply_method` checks
the backbone family and the hyper-parameters, then calls the method's ``apply``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from .core import MethodError, NotMergeable, family_of, unwrap

FAMILIES = ("vit", "cnn", "unet")


@dataclass(frozen=True)
class Method:
    name: str
    families: tuple[str, ...]
    apply: Callable[..., nn.Module]
    """``apply(model, **hparams) -> model``: freeze, add parameters, mark what trains (in place where
    possible; peft methods return the ``PeftModel``)."""
    summary: str
    paper: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    merge: Callable[[nn.Module], nn.Module] | None = None
    """Fold the adapter into plain backbone weights; ``None`` means the method cannot be merged."""
    peft: bool = False
    """Saved in peft's own adapter format (``adapter_config.json``)."""
    identity_at_init: bool = False
    """Applying the method leaves the base model's outputs unchanged (before any training)."""
    saved_buffers: Callable[[nn.Module], list[str]] | None = None
    """Buffers that training changes and the adapter file must carry (BatchNorm statistics)."""
    paper_name: str | None = None
    """The row name in Dutt et al. 2024, where the method is in the paper."""
    paper_families: tuple[str, ...] | None = None
    """The families whose paper row ``paper_name`` is (``None``: every family of the method)."""
    after_load: Callable[[nn.Module], None] | None = None
    """Run by :func:`adapters.io.load_adapter` after the tensors are loaded (LoRA's residual-weight inits)."""
    after_step: Callable[[nn.Module, int], None] | None = None
    """``after_step(model, step)``: run by the training step after each optimizer step, before the
    gradients are cleared (AdaLoRA's rank re-allocation)."""
    extra_loss: Callable[[nn.Module], "torch.Tensor | None"] | None = None
    """``extra_loss(model)``: a regulariser the training step adds to the task loss (AdaLoRA's)."""
    export: Callable[[nn.Module, Path], None] | None = None
    """``export(model, folder)``: extra files :func:`adapters.io.save_adapter` writes beside the adapter
    (e.g. the U-Net LoRA in diffusers' ``pytorch_lora_weights.safetensors`` format)."""

    def paper_row(self, family: str) -> str | None:
        """The paper's row name for this method on a ``family`` backbone (``None``: not in the paper)."""
        if self.paper_families is not None and family not in self.paper_families:
            return None
        return self.paper_name


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise RuntimeError(f"method {method.name!r} registered twice")
    bad = set(method.families) - set(FAMILIES)
    if bad:
        raise RuntimeError(f"method {method.name!r}: unknown families {sorted(bad)}")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise MethodError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}") from None


def methods_for(family: str) -> list[Method]:
    return [m for m in METHODS.values() if family in m.families]


def resolve_hparams(method: Method, hparams: dict[str, Any] | None) -> dict[str, Any]:
    hparams = dict(hparams or {})
    unknown = sorted(set(hparams) - set(method.defaults))
    if unknown:
        known = ", ".join(sorted(method.defaults)) or "none"
        raise MethodError(f"method {method.name!r} has no hyper-parameter(s) {unknown}; it takes: {known}")
    return {**method.defaults, **hparams}


def apply_method(model: nn.Module, name: str, **hparams) -> nn.Module:
    """Apply PEFT method ``name`` to ``model``; return the model to train.

    The returned model remembers ``medpeft_method`` and ``medpeft_hparams`` (what
    :func:`adapters.io.save_adapter` records).
    """
    method = get_method(name)
    family = family_of(model)
    if family not in method.families:
        raise MethodError(f"method {name!r} supports {'/'.join(method.families)} backbones, "
                          f"but {type(unwrap(model)).__name__} is a {family} backbone; "
                          f"methods for {family}: {', '.join(m.name for m in methods_for(family))}")
    hp = resolve_hparams(method, hparams)
    model = method.apply(model, **hp)
    model.medpeft_method = name
    # Sizes the method had to fit to this backbone are recorded as used (resolved, not as asked).
    model.medpeft_hparams = {**hp, **getattr(model, "medpeft_resolved", {})}
    return model


def method_of(model: nn.Module) -> Method | None:
    """The registered method a model carries (None: none)."""
    model = getattr(model, "module", model)  # DDP / accelerate wrappers
    name = getattr(model, "medpeft_method", None)
    return METHODS.get(name) if name else None


def extra_loss(model: nn.Module):
    """The method's regulariser to add to the task loss (None: none)."""
    method = method_of(model)
    return method.extra_loss(getattr(model, "module", model)) if method and method.extra_loss else None


def after_step(model: nn.Module) -> None:
    """Run the method's per-step hook (after ``optimizer.step()``, before the gradients are cleared);
    counts the steps on the model."""
    method = method_of(model)
    if method is None or method.after_step is None:
        return
    inner = getattr(model, "module", model)
    inner.medpeft_step = getattr(inner, "medpeft_step", 0) + 1
    method.after_step(inner, inner.medpeft_step)


def merge_method(model: nn.Module) -> nn.Module:
    """Fold the adapter into the backbone's own weights: same outputs, base-model cost."""
    name = getattr(model, "medpeft_method", None)
    if name is None:
        raise MethodError("this model carries no MedPEFT method (apply_method or load_adapter first)")
    method = get_method(name)
    if method.merge is None:
        raise NotMergeable(f"method {name!r} adds computation that cannot be folded into the backbone")
    merged = method.merge(model)
    merged.medpeft_method = None
    return merged
