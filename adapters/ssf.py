"""``ssf``: Scale and Shift deep Features (Lian et al., "Scaling & Shifting Your Features: A New
Baseline for Efficient Model Tuning", NeurIPS 2022).

After each selected operation, every output channel is scaled and shifted:
``y = op(x) * ssf_scale + ssf_shift``. The backbone is frozen (BatchNorm in eval mode); only the
wrappers' ``ssf_scale`` / ``ssf_shift`` (one value per output channel each) and the head train.

Where (selected by module type, the head excluded):

- ``vit``: every ``nn.Linear`` (``qkv``, ``proj``, ``fc1``, ``fc2``), every ``nn.LayerNorm``
  (``norm1``, ``norm2``, the final ``norm``) and the patch-embedding conv ``patch_embed.proj``,
  as in the paper's ViT code. ViT-B/16: 205,824 + head (the paper: 0.2M).
- ``cnn``: every normalisation layer (BatchNorm, GroupNorm, LayerNorm, including timm's
  ``BatchNormAct2d``/``GroupNormAct``/``LayerNorm2d``...) and every ``nn.Linear``. Convolutions are
  not wrapped: in these networks a conv is followed by a norm, whose SSF covers the same channels.

timm's fused norm+activation layers (``BatchNormAct2d`` etc., e.g. in EfficientNet) compute
``act(drop(norm(x)))``. Scaling after the activation could not be folded into the norm, so the
wrapper takes the layer's ``drop`` and ``act`` out and applies ``act(drop(ssf(norm(x))))``:
SSF sits after the normalisation, before the activation, and stays foldable. Merging puts them back.

Channels: conv, BatchNorm, GroupNorm and channels-first LayerNorm (timm ``LayerNorm2d``) outputs
are ``[N, C, ...]`` (scale/shift broadcast over dim 1); Linear and LayerNorm outputs over the last dim.

Init: ``ssf_scale = 1``, ``ssf_shift = 0`` (hyper-parameter ``init_std=0.0``), so the method is the
identity at init. The paper draws scale ~ N(1, 0.02) and shift ~ N(0, 0.02); ``init_std=0.02``
reproduces that (then not identity at init).

Merge: exact re-parameterisation into the wrapped layer, then the wrapper is replaced by it:
Linear ``W' = diag(g) W, b' = g*b + beta``; Conv2d the same per output channel; norm affine
``w' = g*w, b' = g*b + beta`` (BatchNorm in eval mode is per-channel affine, so this is exact).
A wrapped layer without a bias (or a norm without affine parameters) has nowhere to put the shift
without adding a parameter, so merging such a model raises :class:`NotMergeable` naming the layers
(none in the timm ViTs and ResNets/EfficientNets we use: their Linear layers, patch-embed conv and
norms all have biases).

ResNet50, 3 classes: 53,120 (scale+shift on the 26,560 BatchNorm channels) + 6,147 head = 59,267
(59.3K, 0.25%). Dutt et al. 2024, Table 2 report SSF 60.6K (BN 59.1K, bias 32.7K, full 23.5M). Our
SSF sits at exactly the BatchNorm layers, so it counts the same as ``batchnorm`` (59,267); the
paper's SSF row is ~1.4K above its BN row, which no natural extra placement reproduces (SSF on the
stem conv adds 128, on the pooled features 4,096, after every conv 53,120), so we report the exact
count of the rule above.
"""
from __future__ import annotations

import torch
from torch import nn

from .core import (NORM_TYPES, NotMergeable, family_of, freeze, head_name, modules_of_type, replace_module,
                   train_head, train_params, unwrap)
from .registry import Method, register


def _channels_first_layernorms() -> tuple[type, ...]:
    try:
        import timm.layers as tl
    except ImportError:  # pragma: no cover
        return ()
    names = ("LayerNorm2d", "LayerNorm2dFp32", "LayerNormAct2d", "LayerNormAct2dFp32")
    return tuple(getattr(tl, n) for n in names if hasattr(tl, n))


_CHANNELS_FIRST_LN = _channels_first_layernorms()


def _channels_and_dim(module: nn.Module) -> tuple[int, int]:
    """(number of output channels, the dim they live on) for a module SSF may wrap."""
    if isinstance(module, nn.Linear):
        return module.out_features, -1
    if isinstance(module, nn.Conv2d):
        return module.out_channels, 1
    if isinstance(module, nn.LayerNorm):
        if len(module.normalized_shape) != 1:
            raise ValueError(f"SSF: LayerNorm over {tuple(module.normalized_shape)} is not per-channel")
        return module.normalized_shape[0], (1 if isinstance(module, _CHANNELS_FIRST_LN) else -1)
    if isinstance(module, nn.GroupNorm):
        return module.num_channels, 1
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return module.num_features, 1
    raise TypeError(f"SSF cannot wrap {type(module).__name__}")


def _is_norm_act(module: nn.Module) -> bool:
    """timm's fused norm + activation layers: ``act(drop(norm(x)))``."""
    return isinstance(module, NORM_TYPES) and isinstance(getattr(module, "act", None), nn.Module) \
        and isinstance(getattr(module, "drop", None), nn.Module)


class SSF(nn.Module):
    """``inner(x) * ssf_scale + ssf_shift`` per output channel (before a fused activation)."""

    def __init__(self, inner: nn.Module, init_std: float = 0.0):
        super().__init__()
        channels, self.channel_dim = _channels_and_dim(inner)
        self.inner = inner
        like = _factory(inner)
        self.ssf_scale = nn.Parameter(torch.ones(channels, **like))
        self.ssf_shift = nn.Parameter(torch.zeros(channels, **like))
        if init_std:
            nn.init.normal_(self.ssf_scale, mean=1.0, std=init_std)
            nn.init.normal_(self.ssf_shift, mean=0.0, std=init_std)
        self.drop = self.act = None
        if _is_norm_act(inner):  # move drop/act out so the scale/shift comes before them
            self.drop, self.act = inner.drop, inner.act
            inner.drop, inner.act = nn.Identity(), nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        if self.channel_dim == 1:
            shape = (-1,) + (1,) * (y.ndim - 2)
            y = y * self.ssf_scale.view(shape) + self.ssf_shift.view(shape)
        else:
            y = y * self.ssf_scale + self.ssf_shift
        if self.act is not None:
            y = self.act(self.drop(y))
        return y

    def merge_problem(self) -> str | None:
        inner = self.inner
        if isinstance(inner, (nn.Linear, nn.Conv2d)):
            return None if inner.bias is not None else f"{type(inner).__name__} without bias"
        if getattr(inner, "weight", None) is None or getattr(inner, "bias", None) is None:
            return f"{type(inner).__name__} without affine parameters"
        return None

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """Fold scale and shift into the inner layer and return it (restoring a moved activation)."""
        problem = self.merge_problem()
        if problem:
            raise NotMergeable(f"SSF after a {problem} cannot be merged")
        inner, g, b = self.inner, self.ssf_scale, self.ssf_shift
        w = inner.weight
        inner.weight.copy_(w * g.view((-1,) + (1,) * (w.ndim - 1)))
        inner.bias.copy_(inner.bias * g + b)
        if self.act is not None:
            inner.drop, inner.act = self.drop, self.act
        return inner


def _factory(module: nn.Module) -> dict:
    """device and dtype of the wrapped layer's parameters (defaults if it has none)."""
    p = next(module.parameters(), None)
    return {"device": p.device, "dtype": p.dtype} if p is not None else {}


def ssf_targets(model: nn.Module) -> list[str]:
    """Names of the modules SSF wraps (see the module docstring)."""
    model = unwrap(model)
    head = head_name(model)
    exclude = [head] if head else []
    if family_of(model) == "vit":
        names = modules_of_type(model, (nn.Linear, nn.LayerNorm), exclude=exclude)
        patch = getattr(getattr(model, "patch_embed", None), "proj", None)
        if isinstance(patch, nn.Conv2d):
            names.insert(0, "patch_embed.proj")
        return names
    return modules_of_type(model, NORM_TYPES + (nn.Linear,), exclude=exclude)


def _apply(model: nn.Module, init_std: float = 0.0) -> nn.Module:
    freeze(model)
    base = unwrap(model)
    for name in ssf_targets(base):
        replace_module(base, name, SSF(base.get_submodule(name), init_std=init_std))
    train_params(model, lambda _n, m, p: isinstance(m, SSF) and p in ("ssf_scale", "ssf_shift"))
    train_head(model)
    return model


def _merge(model: nn.Module) -> nn.Module:
    base = unwrap(model)
    wrappers = [(n, m) for n, m in base.named_modules() if isinstance(m, SSF)]
    problems = [f"{n} ({m.merge_problem()})" for n, m in wrappers if m.merge_problem()]
    if problems:
        raise NotMergeable(f"SSF cannot be folded into {len(problems)} layer(s) with nowhere to put the shift: "
                           f"{', '.join(problems[:5])}")
    for name, wrapper in wrappers:
        replace_module(base, name, wrapper.merged())
    return base


register(Method(
    name="ssf", families=("vit", "cnn"), apply=_apply, merge=_merge, defaults={"init_std": 0.0},
    summary="per-channel scale and shift after linear/norm layers + head",
    paper="Lian et al., Scaling & Shifting Your Features (SSF), NeurIPS 2022",
    identity_at_init=True, paper_name="ssf"))
