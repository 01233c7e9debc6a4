"""``ssf``: Scale and Shift deep Features (Lian et al., "Scaling & Shifting Your Features: A New
Baseline for Efficient Model Tuning", NeurIPS 2022).

After each selected operation, every output channel is scaled and shifted:
``y = op(x) * ssf_scale + ssf_shift``. The backbone is frozen (BatchNorm in eval mode); only the
wrappers' ``ssf_scale`` / ``ssf_shift`` (one value per channel each) and the head train.

Where (selected by module type, the head excluded), hyper-parameter ``sites``:

- ``official`` (default), as the official SSF code places them:
  ``vit``: every ``nn.Linear`` (``qkv``, ``proj``, ``fc1``, ``fc2``), every ``nn.LayerNorm``
  (``norm1``, ``norm2``, the final ``norm``) and the patch-embedding conv ``patch_embed.proj``.
  ViT-B/16: 205,824 + head (the paper: 0.2M).
  ``cnn``: after every convolution (grouped/depthwise and squeeze-excitation convs too), every
  normalisation layer (BatchNorm, GroupNorm, LayerNorm, including timm's ``BatchNormAct2d``/
  ``GroupNormAct``/``LayerNorm2d``...) and every ``nn.Linear``, and on the final features (the head's
  input, :class:`SSFHeadInput`), as the official code's ConvNeXt/Swin/ViT models do (ssf after each
  conv/norm/linear, and ``ssf_scale/ssf_shift`` before the head).
- ``norm`` (the placement before issue 12): ViT: the LayerNorms only; CNN: the normalisation layers and
  ``nn.Linear`` layers only. With frozen (eval-mode) BatchNorm that is the same function class as
  ``batchnorm`` tuning, with the same count.

ResNet50, 3 classes (Dutt et al. 2024, Table 2 report SSF 60.6K; BN 59.1K, bias 32.7K):

- ``official``: 53,120 after the 53 convs + 53,120 after the 53 BatchNorms + 4,096 on the 2,048 pooled
  features + 6,147 head = 116,483 (116.5K, ~1.9x the paper's count);
- ``norm``: 53,120 + 6,147 = 59,267 (59.3K; 1.3K under the paper's 60.6K, which no natural placement
  reproduces: norm + final features would be 63,363).

Note that a scale-shift after a conv that feeds a frozen BatchNorm, and the one on the features of a
linear head, compose into the next affine layer: the official placement adds parameters (and changes
the optimisation), not expressiveness, over ``norm`` on such networks.

timm's fused norm+activation layers (``BatchNormAct2d`` etc., e.g. in EfficientNet) compute
``act(drop(norm(x)))``. Scaling after the activation could not be folded into the norm, so the
wrapper takes the layer's ``drop`` and ``act`` out and applies ``act(drop(ssf(norm(x))))``:
SSF sits after the normalisation, before the activation, and stays foldable. Merging puts them back.

Channels: conv, BatchNorm, GroupNorm and channels-first LayerNorm (timm ``LayerNorm2d``) outputs
are ``[N, C, ...]`` (scale/shift broadcast over dim 1); Linear and LayerNorm outputs over the last dim.

Memory: while training, each site runs through one autograd function that keeps only the frozen
layer's input for backward and recomputes the layer there (:func:`ssf_forward`), so SSF keeps no more
activations than full fine-tuning does (issue 16); the output keeps the layer's dtype under autocast.

Init: ``ssf_scale = 1``, ``ssf_shift = 0`` (hyper-parameter ``init_std=0.0``), so the method is the
identity at init. The official code draws scale ~ N(1, 0.02) and shift ~ N(0, 0.02); ``init_std=0.02``
reproduces that (then not identity at init).

Merge: exact re-parameterisation, then every wrapper is replaced by its layer:
Linear ``W' = diag(g) W, b' = g*b + beta``; Conv2d the same per output channel; norm affine
``w' = g*w, b' = g*b + beta`` (BatchNorm in eval mode is per-channel affine, so this is exact); the
head-input one into the head ``W' = W diag(g), b' = b + W beta``. A conv without a bias (ResNet,
EfficientNet) takes the scale into its kernel and hands the shift to the BatchNorm registered right
after it (``b_bn' = b_bn + w_bn * beta / sqrt(var + eps)``); because that pairing relies on timm's
layer order, the merge is checked on a random input and refused (:class:`NotMergeable`) if the outputs
differ. A layer with nowhere to put the shift (a biasless Linear, a biasless conv not followed by a
BatchNorm such as DenseNet's, a norm without affine parameters) raises :class:`NotMergeable` naming it.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..core import (BN_TYPES, NORM_TYPES, NotMergeable, family_of, freeze, head_name, modules_of_type, replace_module,
                   train_head, train_params, unwrap)
from ..registry import Method, register


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


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


def _affine(y: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, dim: int) -> torch.Tensor:
    """``y * scale + shift`` with scale/shift on channel dim ``dim`` (1 or -1), in the parameters'
    precision and returned in ``y``'s dtype (under autocast: the dtype of the wrapped layer's output,
    as the merged layer's would be)."""
    if dim == 1 and y.ndim > 2:
        shape = (-1,) + (1,) * (y.ndim - 2)
        scale, shift = scale.view(shape), shift.view(shape)
    out = y * scale + shift
    return out if out.dtype == y.dtype else out.to(y.dtype)


def _reduce_dims(y: torch.Tensor, dim: int) -> list[int]:
    """Every dim but the channel one: what a per-channel parameter's gradient sums over."""
    keep = dim % y.ndim
    return [d for d in range(y.ndim) if d != keep]


class _SSFRecomputeFn(torch.autograd.Function):
    """``inner(x) * scale + shift`` that saves only ``x`` (the input of the frozen wrapped layer) for
    backward and recomputes ``inner(x)`` there (issue 16).

    The plain expression keeps the layer's output ``y`` for the scale's gradient on top of what the
    network keeps anyway, and under bf16 autocast its output is promoted to fp32: SSF then held more
    activation memory than full fine-tuning. Here the op keeps exactly what a trainable layer keeps
    in full fine-tuning (its input; under autocast the input cast to the autocast dtype, which is the
    copy ``F.linear``/``conv`` keeps too) and its output stays in the layer's dtype. Backward:
    ``grad_shift = sum(g)``, ``grad_scale = sum(g * y)``, ``grad_x = d inner / dx`` applied to
    ``g * scale``, with ``y`` recomputed under the forward's autocast state - the same gradients as
    the plain expression's. Used only when the wrapped layer has no trainable parameters and no state
    that a second forward would change (a BatchNorm updating running statistics); see
    :func:`ssf_forward`. Nothing it saves is the output, so in-place activations after it
    (``ReLU(inplace=True)``, ``x += shortcut``) are safe."""

    @staticmethod
    def forward(ctx, x, scale, shift, inner, dim):
        device = x.device.type
        enabled, dtype = _autocast_state(device)
        y = inner(x)
        out = _affine(y, scale, shift, dim)
        keep = x
        if enabled and isinstance(inner, (nn.Linear, nn.Conv2d)) and x.is_floating_point() and x.dtype != dtype:
            keep = x.to(dtype)  # what the layer computes from under autocast; recomputing from it is exact
        ctx.save_for_backward(keep, scale)
        ctx.inner, ctx.dim, ctx.x_dtype, ctx.autocast = inner, dim, x.dtype, (device, enabled, dtype)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, scale = ctx.saved_tensors
        device, enabled, dtype = ctx.autocast
        need_x = ctx.needs_input_grad[0]
        with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
            xd = x.detach().requires_grad_(need_x)
            y = ctx.inner(xd)
        dims = _reduce_dims(y, ctx.dim)
        gf = g.float() if g.dtype != scale.dtype else g
        grad_scale = (gf * y.detach().to(gf.dtype)).sum(dims).to(scale.dtype) if ctx.needs_input_grad[1] else None
        grad_shift = gf.sum(dims).to(scale.dtype) if ctx.needs_input_grad[2] else None
        grad_x = None
        if need_x:
            s = scale.view((-1,) + (1,) * (y.ndim - 2)) if ctx.dim == 1 and y.ndim > 2 else scale
            (grad_x,) = torch.autograd.grad(y, xd, (gf * s).to(y.dtype))
            grad_x = grad_x.to(ctx.x_dtype)
        return grad_x, grad_scale, grad_shift, None, None


def _recomputable(inner: nn.Module) -> bool:
    """A layer whose forward may run again in backward: frozen, and no BatchNorm in training mode
    (a second forward would update its running statistics twice)."""
    if any(p.requires_grad for p in inner.parameters(recurse=True)):
        return False
    return not (isinstance(inner, BN_TYPES) and inner.training and inner.track_running_stats)


def ssf_forward(inner: nn.Module, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                dim: int) -> torch.Tensor:
    """``inner(x) * scale + shift`` (channels on ``dim``). While training (gradients enabled, a trainable
    scale or shift, a frozen recomputable ``inner``) through :class:`_SSFRecomputeFn`, which keeps no
    activation beyond ``x``; otherwise the plain expression."""
    if torch.is_grad_enabled() and (scale.requires_grad or shift.requires_grad) and _recomputable(inner):
        return _SSFRecomputeFn.apply(x, scale, shift, inner, dim)
    return _affine(inner(x), scale, shift, dim)


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
        y = ssf_forward(self.inner, x, self.ssf_scale, self.ssf_shift, self.channel_dim)
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


class SSFHeadInput(nn.Module):
    """``head(x * ssf_scale + ssf_shift)``: SSF on the final features, folded into the (Linear) head."""

    def __init__(self, inner: nn.Linear, init_std: float = 0.0):
        super().__init__()
        self.inner = inner
        like = _factory(inner)
        self.ssf_scale = nn.Parameter(torch.ones(inner.in_features, **like))
        self.ssf_shift = nn.Parameter(torch.zeros(inner.in_features, **like))
        if init_std:
            nn.init.normal_(self.ssf_scale, mean=1.0, std=init_std)
            nn.init.normal_(self.ssf_shift, mean=0.0, std=init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x * self.ssf_scale + self.ssf_shift)

    def merge_problem(self) -> str | None:
        return None if self.inner.bias is not None else "head without bias"

    @torch.no_grad()
    def merged(self) -> nn.Module:
        if self.merge_problem():
            raise NotMergeable(f"SSF before a {self.merge_problem()} cannot be merged")
        head = self.inner
        head.bias.copy_(head.bias + head.weight @ self.ssf_shift)
        head.weight.copy_(head.weight * self.ssf_scale)
        return head


def _factory(module: nn.Module) -> dict:
    """device and dtype of the wrapped layer's parameters (defaults if it has none)."""
    p = next(module.parameters(), None)
    return {"device": p.device, "dtype": p.dtype} if p is not None else {}


SITES = ("official", "norm")


def ssf_targets(model: nn.Module, sites: str = "official") -> list[str]:
    """Names of the modules SSF wraps (see the module docstring); the head-input SSF not included."""
    if sites not in SITES:
        raise ValueError(f"SSF sites must be one of {', '.join(SITES)}, not {sites!r}")
    model = unwrap(model)
    head = head_name(model)
    exclude = [head] if head else []
    if family_of(model) == "vit":
        if sites == "norm":
            return modules_of_type(model, nn.LayerNorm, exclude=exclude)
        names = modules_of_type(model, (nn.Linear, nn.LayerNorm), exclude=exclude)
        patch = getattr(getattr(model, "patch_embed", None), "proj", None)
        if isinstance(patch, nn.Conv2d):
            names.insert(0, "patch_embed.proj")
        return names
    types = NORM_TYPES + (nn.Linear,) + ((nn.Conv2d,) if sites == "official" else ())
    return modules_of_type(model, types, exclude=exclude)


def _apply(model: nn.Module, init_std: float = 0.0, sites: str = "official") -> nn.Module:
    freeze(model)
    base = unwrap(model)
    for name in ssf_targets(base, sites):
        replace_module(base, name, SSF(base.get_submodule(name), init_std=init_std))
    head = head_name(base)
    if sites == "official" and family_of(base) == "cnn" and head and isinstance(base.get_submodule(head), nn.Linear):
        replace_module(base, head, SSFHeadInput(base.get_submodule(head), init_std=init_std))
    train_params(model, lambda _n, m, p: isinstance(m, (SSF, SSFHeadInput)) and p in ("ssf_scale", "ssf_shift"))
    train_head(model)
    return model


def _next_sibling(model: nn.Module, name: str) -> nn.Module | None:
    """The module registered right after ``name`` in its parent (timm registers a conv's norm next)."""
    parent_name, _, child = name.rpartition(".")
    children = list((model.get_submodule(parent_name) if parent_name else model).named_children())
    idx = [n for n, _ in children].index(child)
    return children[idx + 1][1] if idx + 1 < len(children) else None


def _shift_sink(model: nn.Module, name: str, wrapper: SSF) -> nn.Module | None:
    """For an SSF after a biasless conv: the eval-mode BatchNorm that takes its shift, else ``None``."""
    nxt = _next_sibling(model, name)
    bn = nxt.inner if isinstance(nxt, SSF) else nxt
    if isinstance(bn, BN_TYPES) and bn.num_features == wrapper.ssf_shift.numel() and bn.weight is not None \
            and bn.bias is not None and bn.running_var is not None:
        return bn
    return None


@torch.no_grad()
def _fold_into_biasless_conv(wrapper: SSF, bn: nn.Module) -> nn.Module:
    conv, g, b = wrapper.inner, wrapper.ssf_scale, wrapper.ssf_shift
    conv.weight.copy_(conv.weight * g.view((-1,) + (1,) * (conv.weight.ndim - 1)))
    bn.bias.copy_(bn.bias + bn.weight * b / torch.sqrt(bn.running_var + bn.eps))
    return conv


def _probe(model: nn.Module) -> torch.Tensor | None:
    p = next(model.parameters())
    if p.is_meta:
        return None
    size = tuple((getattr(model, "pretrained_cfg", None) or {}).get("input_size") or (3, 224, 224))
    x = torch.randn((2,) + size, generator=torch.Generator().manual_seed(0)).to(device=p.device, dtype=p.dtype)
    with torch.no_grad():
        return model(x), x


def _merge(model: nn.Module) -> nn.Module:
    base = unwrap(model)
    wrappers = [(n, m) for n, m in base.named_modules() if isinstance(m, (SSF, SSFHeadInput))]
    sinks, problems = {}, []
    for n, m in wrappers:
        problem = m.merge_problem()
        if problem and isinstance(m, SSF) and isinstance(m.inner, nn.Conv2d):
            sinks[n] = _shift_sink(base, n, m)
            problem = None if sinks[n] is not None else "Conv2d without bias and no BatchNorm after it"
        if problem:
            problems.append(f"{n} ({problem})")
    if problems:
        raise NotMergeable(f"SSF cannot be folded into {len(problems)} layer(s) with nowhere to put the shift: "
                           f"{', '.join(problems[:5])}")
    if not sinks:
        for name, wrapper in wrappers:
            replace_module(base, name, wrapper.merged())
        return base
    was_training = base.training
    base.eval()
    probe = _probe(base)
    merged = copy.deepcopy(base)  # the conv -> BatchNorm pairing is checked before the model is given up
    for name, wrapper in [(n, merged.get_submodule(n)) for n, _ in wrappers]:
        layer = _fold_into_biasless_conv(wrapper, _shift_sink(merged, name, wrapper)) if name in sinks \
            else wrapper.merged()
        replace_module(merged, name, layer)
    if probe is not None:
        expected, x = probe
        with torch.no_grad():
            got = merged(x)
        if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * max(1.0, expected.abs().max().item())):
            raise NotMergeable("SSF after a biasless conv: the BatchNorm registered after it does not read its "
                               "output in this network, so the shift cannot be folded")
    merged.train(was_training)
    return merged


register(Method(
    name="ssf", families=("vit", "cnn"), apply=_apply, merge=_merge, defaults={"init_std": 0.0, "sites": "official"},
    summary="per-channel scale and shift after every conv/linear/norm layer and on the final features + head",
    paper="Lian et al., Scaling & Shifting Your Features (SSF), NeurIPS 2022",
    identity_at_init=True, paper_name="ssf"))
