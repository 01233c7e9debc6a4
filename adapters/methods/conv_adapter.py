"""Conv-Adapter (Chen et al., "Conv-Adapter: Exploring Parameter Efficient Transfer Learning for
ConvNets", CVPR 2024 Prompting in Vision workshop, arXiv 2208.07463; official code Hhhhhhao/Conv-Adapter):
a light convolutional branch in parallel with the spatial-convolution stage of every residual block
(the paper's "Conv-Parallel" placement, its best on ResNet-50):

    Bottleneck:  a = act2(bn2(conv2(h))) + adapter(h)     h = act1(bn1(conv1(x)))  (then aa, conv3, ...)
    BasicBlock:  a = act1(bn1(conv1(x))) + adapter(x)                              (then aa, conv2, ...)

``adapter(h) = alpha * pw(ReLU(dw(h)))``: ``dw`` a k x k convolution C -> C/gamma with C/gamma groups (each
group reads gamma channels) and the stage's stride, ``pw`` a 1x1 convolution to the stage's output
channels, ``alpha`` a learned per-channel scale (the official "Design 2 v4" ``ConvAdapter``).

- trains: ``dw``, ``pw`` (weights and biases) and ``alpha`` of every block (+ head). BatchNorm stays frozen.
- hyper-parameters: ``reduction=4`` (gamma, the official ``adapt_size``), ``kernel_size=3``.
- init as the official ResNet code: both convolutions kaiming-normal (fan_out, ReLU), biases zero,
  ``alpha`` one: *not* the base model at init.
- differences from the official code: timm's blocks (its BasicBlock branch in the official code reads a
  variable before it is set; here the branch sits beside ``conv1``); the branch is added before timm's
  optional anti-aliasing ``aa`` layer. ResNet-style timm blocks only; other CNNs are refused with the
  methods that fit them.
- not mergeable (the ReLU).
"""
from __future__ import annotations

import torch
from torch import nn

from ..core import MethodError, add_mixin, freeze, train_head, train_params
from ..registry import Method, register


class ConvAdapter(nn.Module):
    def __init__(self, cin: int, cout: int, stride, reduction: int, kernel_size: int, like: torch.Tensor):
        super().__init__()
        kw = dict(device=like.device, dtype=like.dtype)
        width = max(1, cin // int(reduction))
        groups = width if cin % width == 0 else 1
        self.dw = nn.Conv2d(cin, width, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, **kw)
        self.pw = nn.Conv2d(width, cout, 1, **kw)
        self.act = nn.ReLU()
        self.alpha = nn.Parameter(torch.ones(1, cout, 1, 1, **kw))
        with torch.no_grad():
            for conv in (self.dw, self.pw):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.act(self.dw(x))) * self.alpha


class AdaptedBottleneck:
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        h = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.drop_block(self.bn2(self.conv2(h)))) + self.conv_adapter(h)
        x = self.bn3(self.conv3(self.aa(x)))
        return self.act3(_finish(self, x, shortcut))


class AdaptedBasicBlock:
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        h = self.act1(self.drop_block(self.bn1(self.conv1(x)))) + self.conv_adapter(x)
        x = self.bn2(self.conv2(self.aa(h)))
        return self.act2(_finish(self, x, shortcut))


def _finish(block, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    if block.se is not None:
        x = block.se(x)
    if block.drop_path is not None:
        x = block.drop_path(x)
    if block.downsample is not None:
        shortcut = block.downsample(shortcut)
    return x + shortcut


def _apply(model: nn.Module, reduction: int = 4, kernel_size: int = 3) -> nn.Module:
    if int(reduction) < 1 or int(kernel_size) < 1 or int(kernel_size) % 2 == 0:
        raise MethodError(f"Conv-Adapter needs reduction >= 1 and an odd kernel_size, not {reduction}, {kernel_size}")
    blocks = [m for m in model.modules() if type(m).__name__ in ("Bottleneck", "BasicBlock") and hasattr(m, "conv1")
              and hasattr(m, "aa")]
    if not blocks:
        raise MethodError(f"Conv-Adapter supports timm ResNet-style blocks; {type(model).__name__} has none "
                          "(for other CNNs use lora, loha, lokr, hira, tsa or ssf)")
    freeze(model)
    like = next(model.parameters())
    for b in blocks:
        if hasattr(b, "conv_adapter"):
            raise MethodError("Conv-Adapter is already applied to this model")
        bottleneck = type(b).__name__ == "Bottleneck"
        conv = b.conv2 if bottleneck else b.conv1
        b.conv_adapter = ConvAdapter(conv.in_channels, conv.out_channels, conv.stride, reduction, int(kernel_size), like)
        add_mixin(b, AdaptedBottleneck if bottleneck else AdaptedBasicBlock, "ConvAdapted")
    train_params(model, lambda n, _m, _p: n.endswith("conv_adapter") or ".conv_adapter." in n)
    train_head(model)
    return model


register(Method(
    name="conv_adapter", families=("cnn",), apply=_apply, merge=None, defaults={"reduction": 4, "kernel_size": 3},
    summary="parallel depthwise-separable conv adapters beside each residual block's spatial conv + head",
    paper="Chen et al., Conv-Adapter, CVPR 2024 workshop (arXiv 2208.07463)", identity_at_init=False))
