"""``tsa``: Task-Specific Adapters (Li, Liu & Bilen, "Cross-domain Few-shot Learning with
Task-specific Adapters", CVPR 2022), the residual "parallel, matrix" form used for CNNs.

Beside each selected convolution a 1x1 convolution ``alpha`` (same stride, same groups, no bias)
is added in parallel: ``y = conv(x) + alpha(x)``. The backbone is frozen (BatchNorm in eval mode);
only the wrappers' ``tsa_alpha`` tensors and the head train.

``targets`` (the stem conv is never adapted, as in the official code):

- ``"main"`` (default): every Conv2d except the stem and residual-shortcut projections
  (modules under a ``downsample``/``shortcut`` child). This is what the official code does on
  ResNets (it adapts the conv children of every residual block). ResNet50, 3 classes:
  10,616,832 + 6,147 head = 10,622,979 (10.6M), matching Dutt et al. 2024, Table 2 (10.6M).
- ``"spatial"``: only convs with a kernel larger than 1x1 (the official code's ``kernel_size == 3``
  filter, which on its ResNet-18 is every block conv). ResNet50: 1,257,472 + 6,147 = 1.26M.
- ``"all"``: every Conv2d except the stem. ResNet50: 13,385,728 + 6,147 = 13.4M.

Init: as in the official code (``tsa_init='eye'``), ``alpha = I * 1e-4`` (a rectangular identity
``eye(C_out, C_in)`` for non-square convs; per group for grouped convs), hyper-parameter
``init_scale``. The adapter therefore starts *near* the identity, not at it:
``identity_at_init=False`` (``init_scale=0`` makes it exact).

Deviations from the official code: ``alpha`` has the conv's ``groups`` (for ``groups=1``, every
ResNet conv, it is the official dense ``C_out x C_in`` matrix; for depthwise convs, e.g. in
EfficientNet, it is a per-channel scale), which keeps every adapter mergeable; the optional
pre-classifier alignment ``beta`` (a ``C x C`` linear map before the head) is not included, as
the paper's 10.6M count shows Dutt et al. did not train it.

Merge: exact for a conv whose centre tap samples the same input pixel as the strided 1x1 adapter,
i.e. odd kernel and padding ``dilation * (k // 2)`` in both dims (or ``padding='same'``): the 1x1
kernel is added to the centre tap of the kxk kernel (directly for 1x1 convs). A conv with timm's
dynamic "same" padding (``Conv2dSame``, stride > 1: asymmetric padding) raises
:class:`NotMergeable` naming the layer. Convs whose output grid differs from the adapter's
(padding not "same") are refused at apply time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core import MethodError, NotMergeable, freeze, head_name, replace_module, train_head, train_params, unwrap
from ..registry import Method, register

TARGETS = ("main", "spatial", "all")
SHORTCUT_NAMES = ("downsample", "shortcut")


def _dynamic_same(conv: nn.Conv2d) -> bool:
    """timm's ``Conv2dSame``: pads in forward (asymmetrically when strided)."""
    return type(conv).__name__ == "Conv2dSame"


def _same_grid(conv: nn.Conv2d) -> bool:
    """The strided 1x1 adapter yields the conv's output grid for every input size."""
    if _dynamic_same(conv) or conv.padding == "same":
        return True
    return all(2 * p == d * (k - 1) for p, d, k in zip(conv.padding, conv.dilation, conv.kernel_size))


def merge_problem(conv: nn.Conv2d) -> str | None:
    """Why ``alpha`` cannot be folded into ``conv`` (``None``: it can)."""
    k = conv.kernel_size
    if max(k) == 1:
        return None
    if any(kk % 2 == 0 for kk in k):
        return f"even kernel {tuple(k)} has no centre tap"
    if _dynamic_same(conv):
        if max(conv.stride) > 1:
            return "dynamic 'same' padding (timm Conv2dSame) is asymmetric when strided: the centre tap is " \
                   "not aligned with the 1x1 adapter"
        return None
    if conv.padding != "same" and any(p != d * (kk // 2) for p, d, kk in zip(conv.padding, conv.dilation, k)):
        return f"padding {conv.padding} is not 'same' for kernel {tuple(k)}"
    return None


class TSAConv(nn.Module):
    """``conv(x) + conv1x1(x; tsa_alpha)``: a frozen conv with a parallel residual adapter."""

    def __init__(self, conv: nn.Conv2d, init_scale: float = 1e-4):
        super().__init__()
        self.conv = conv
        cout, cin_g, g = conv.out_channels, conv.in_channels // conv.groups, conv.groups
        eye = torch.eye(cout // g, cin_g, device=conv.weight.device, dtype=conv.weight.dtype).repeat(g, 1)
        self.tsa_alpha = nn.Parameter((eye * init_scale)[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + F.conv2d(x, self.tsa_alpha, stride=self.conv.stride, groups=self.conv.groups)

    @torch.no_grad()
    def merged(self) -> nn.Conv2d:
        conv = self.conv
        kh, kw = conv.kernel_size
        conv.weight[:, :, kh // 2, kw // 2] += self.tsa_alpha[:, :, 0, 0]
        return conv


def _stem_name(model: nn.Module) -> str | None:
    first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if first:
        try:
            if isinstance(model.get_submodule(first), nn.Conv2d):
                return first
        except AttributeError:
            pass
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def tsa_targets(model: nn.Module, targets: str = "main") -> list[str]:
    """Names of the convs TSA adapts (see the module docstring)."""
    if targets not in TARGETS:
        raise MethodError(f"tsa: targets must be one of {', '.join(TARGETS)}, not {targets!r}")
    model = unwrap(model)
    skip = {_stem_name(model), head_name(model)}
    names = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d) or name in skip:
            continue
        if targets == "spatial" and max(m.kernel_size) == 1:
            continue
        if targets == "main" and any(part in SHORTCUT_NAMES for part in name.split(".")):
            continue
        names.append(name)
    return names


def _apply(model: nn.Module, targets: str = "main", init_scale: float = 1e-4) -> nn.Module:
    freeze(model)
    base = unwrap(model)
    names = tsa_targets(base, targets)
    bad = [n for n in names if not _same_grid(base.get_submodule(n))]
    if bad:
        raise MethodError(f"tsa: the parallel 1x1 adapter cannot match the output grid of conv(s) without "
                          f"'same' padding: {', '.join(bad[:5])}")
    for name in names:
        replace_module(base, name, TSAConv(base.get_submodule(name), init_scale=init_scale))
    train_params(model, lambda _n, m, p: isinstance(m, TSAConv) and p == "tsa_alpha")
    train_head(model)
    return model


def _merge(model: nn.Module) -> nn.Module:
    base = unwrap(model)
    wrappers = [(n, m) for n, m in base.named_modules() if isinstance(m, TSAConv)]
    problems = [(n, merge_problem(m.conv)) for n, m in wrappers]
    problems = [(n, p) for n, p in problems if p]
    if problems:
        name, why = problems[0]
        raise NotMergeable(f"tsa: {len(problems)} adapted conv(s) cannot absorb the 1x1 adapter, e.g. {name}: {why}")
    for name, wrapper in wrappers:
        replace_module(base, name, wrapper.merged())
    return base


register(Method(
    name="tsa", families=("cnn",), apply=_apply, merge=_merge,
    defaults={"targets": "main", "init_scale": 1e-4},
    summary="parallel 1x1 residual adapters beside the convolutions + head",
    paper="Li, Liu & Bilen, Cross-domain Few-shot Learning with Task-specific Adapters, CVPR 2022",
    identity_at_init=False, paper_name="tsa"))
