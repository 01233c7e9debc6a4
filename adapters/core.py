"""The one place that decides what trains.

Every method freezes the model with :func:`freeze`, then switches on exactly the
parameters it owns with :func:`train_params` (selected by module *type* and
parameter *name*, never by substring soup over the full path), and finally
:func:`train_head` leaves the classifier trainable.

Backbone families:
- ``vit``  timm ``VisionTransformer`` (and subclasses such as DeiT): ``blocks[i].attn.qkv``,
  ``blocks[i].mlp``, LayerNorms, a ``head``.
- ``cnn``  any other timm image model built from convolutions (ResNet, EfficientNet, ConvNeXt...).
- ``unet`` ``diffusers.UNet2DConditionModel`` (text-to-image generation).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors.torch import save_file
from torch import nn

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class MethodError(ValueError):
    """A PEFT method cannot be applied, saved, loaded or merged as asked."""


class NotMergeable(MethodError):
    """The method adds computation that cannot be folded into the backbone's weights."""


class BackboneError(ValueError):
    """A backbone cannot be created or initialised as asked."""


def family_of(model: nn.Module) -> str:
    """Return ``vit``, ``cnn`` or ``unet`` for a (possibly peft-wrapped) model."""
    model = unwrap(model)
    try:
        from timm.models.vision_transformer import VisionTransformer

        if isinstance(model, VisionTransformer):
            return "vit"
    except ImportError:  # pragma: no cover - timm is a hard requirement
        pass
    if type(model).__name__ == "UNet2DConditionModel":
        return "unet"
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return "cnn"
    raise MethodError(f"cannot tell the backbone family of {type(model).__name__}: "
                      "expected a timm VisionTransformer, a timm CNN or a diffusers UNet2DConditionModel")


def unwrap(model: nn.Module) -> nn.Module:
    """The timm/diffusers model inside a peft wrapper (or the model itself)."""
    try:
        from peft import PeftModel

        if isinstance(model, PeftModel):
            return model.base_model.model
    except ImportError:  # pragma: no cover
        pass
    return model


def head_name(model: nn.Module) -> str | None:
    """Dotted module name of a timm model's classifier (``head``, ``fc``, ``classifier``...)."""
    model = unwrap(model)
    if not hasattr(model, "get_classifier"):
        return None
    head = model.get_classifier()
    if isinstance(head, nn.Identity) or head is None:
        return None
    for name, mod in model.named_modules():
        if mod is head:
            return name
    return None


def freeze(model: nn.Module) -> None:
    """Every parameter frozen; BatchNorm running statistics frozen too (eval-mode BN).

    A frozen backbone must not drift through BN statistics updated in ``train()``
    mode (timm ``freeze_batch_norm_2d`` does the same by module swap); we keep the
    BN module and its parameter names, and pin it to eval mode instead.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, BN_TYPES):
            freeze_bn_stats(m)


class _EvalModeBN:
    """Mixin: this BatchNorm stays in eval mode (running statistics are used and not updated)."""

    def train(self, mode: bool = True):  # noqa: D401
        return super().train(False)


_MIXED: dict[tuple[type, type], type] = {}


def add_mixin(module: nn.Module, mixin: type, prefix: str) -> None:
    """Give ``module`` the class ``<prefix><Class>(mixin, Class)`` (made once per pair and cached), so
    that ``isinstance(module, mixin)`` marks it while it keeps its own behaviour; :func:`remove_mixin`
    undoes it. Already mixed: nothing happens."""
    cls = type(module)
    if issubclass(cls, mixin):
        return
    if (cls, mixin) not in _MIXED:
        _MIXED[(cls, mixin)] = type(f"{prefix}{cls.__name__}", (mixin, cls), {})
    module.__class__ = _MIXED[(cls, mixin)]


def remove_mixin(module: nn.Module, mixin: type) -> None:
    """Undo :func:`add_mixin`: the module gets back its own class."""
    cls = type(module)
    if issubclass(cls, mixin):
        module.__class__ = cls.__mro__[2]  # (<prefix>X, mixin, X)


def freeze_bn_stats(bn: nn.Module) -> None:
    add_mixin(bn, _EvalModeBN, "FrozenStats")
    bn.eval()


def unfreeze_bn_stats(bn: nn.Module) -> None:
    remove_mixin(bn, _EvalModeBN)


def train_params(model: nn.Module, select: Callable[[str, nn.Module, str], bool]) -> int:
    """Set ``requires_grad`` on every parameter for which ``select(module_name, module, param_name)``
    is true (parameters directly owned by each module). Returns how many tensors were switched on."""
    n = 0
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if select(mname, module, pname):
                p.requires_grad_(True)
                n += 1
    return n


def train_modules(model: nn.Module, names: Iterable[str]) -> int:
    """Switch on every parameter of the named submodules; returns how many tensors."""
    n = 0
    for name in names:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)
            n += 1
    return n


def train_head(model: nn.Module) -> None:
    name = head_name(model)
    if name is None:
        return
    for p in unwrap(model).get_submodule(name).parameters():
        p.requires_grad_(True)


def trainable_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared tensors counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def modules_of_type(model: nn.Module, types, exclude: Iterable[str] = ()) -> list[str]:
    """Names of modules that are instances of ``types`` (exact module classes, not placeholders)."""
    exclude = tuple(exclude)
    return [n for n, m in model.named_modules()
            if isinstance(m, types) and n and not any(n == e or n.startswith(e + ".") for e in exclude)]


def is_vit_attention(name: str, module: nn.Module) -> bool:
    """timm ViT attention block (``blocks.N.attn``)."""
    return type(module).__name__ in {"Attention", "AttentionRope"} and hasattr(module, "qkv")


def bias_param(_m: str, _mod: nn.Module, pname: str) -> bool:
    return pname == "bias"


def merge_selective(model: nn.Module) -> nn.Module:
    """The merge of a selective method (one that trains a subset of the backbone's own tensors and adds
    nothing): the trained tensors already are the backbone's weights, so the merged model is the backbone."""
    return unwrap(model)


def is_depthwise_conv(module: nn.Module) -> bool:
    """A grouped Conv2d with one input channel per group (MobileNet/EfficientNet/ConvNeXt ``conv_dw``)."""
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


@torch.no_grad()
def copy_params(dst: nn.Module, src: nn.Module) -> None:
    dst.load_state_dict(src.state_dict())


# Files: written with the mode an ordinary ``open`` gives (used by io and checkpoints alike).

def umask() -> int:
    """The process's file-creation mask, read without changing it (Linux /proc), else by setting and
    restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_file_beside(path: str | os.PathLike) -> tuple[int, str]:
    """``tempfile.mkstemp`` in ``path``'s folder, but with the mode an ordinary ``open`` would give
    (0666 minus the umask) instead of mkstemp's 0600: an atomically written file gets the same
    permissions as every other file of the run."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~umask())
    return fd, tmp


def save_tensors(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """``safetensors.torch.save_file`` with the mode an ordinary ``open`` gives (0666 minus the umask;
    safetensors itself creates 0600 files)."""
    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~umask())
