"""DiffFit (Xie et al., "DiffFit: Unlocking Transferability of Large Diffusion Models via Simple
Parameter-Efficient Fine-Tuning", ICCV 2023) on the Stable Diffusion U-Net.

What trains: every bias, every GroupNorm/LayerNorm affine, and learnable per-channel scale factors
``gamma`` (init 1) on the residual branches of every transformer block: the outputs of self-attention
(``attn1.to_out.0``), cross-attention (``attn2.to_out.0``) and the feed-forward (``ff.net.2``), i.e.
``x + gamma * Branch(x)`` as in DiffFit's DiT blocks. (DiffFit was designed for DiT; on the U-Net its
scale factors go on the diffusers ``BasicTransformerBlock`` branches, the ResNet blocks get bias + norm
tuning only.)

Identity at init: ``gamma = 1`` and nothing else changes. Each output Linear becomes a
:class:`ScaledLinear` (an ``nn.Linear`` subclass with a parameter ``difffit_gamma``; names are unchanged).

Merge: ``gamma`` is folded into the output projection, ``W <- diag(gamma) W`` and ``b <- gamma * b``
(exact up to fp32 rounding); the layers become plain ``nn.Linear`` again.

SD 1.5 U-Net: 343,684 biases + 100,160 norm weights + 37,440 gammas = 481,284 trainable parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core import MethodError, freeze, train_params
from ..registry import Method, register


class ScaledLinear(nn.Linear):
    """``gamma * (x W^T + b)``, gamma per output channel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) * self.difffit_gamma.to(x.dtype)


def branch_output_names(model: nn.Module) -> list[str]:
    """The output Linears of the attention and feed-forward branches of every transformer block."""
    names = []
    for name, module in model.named_modules():
        if type(module).__name__ != "BasicTransformerBlock":
            continue
        for child in ("attn1.to_out.0", "attn2.to_out.0", "ff.net.2"):
            try:
                sub = module.get_submodule(child)
            except AttributeError:  # e.g. a block without cross-attention
                continue
            if isinstance(sub, nn.Linear):
                names.append(f"{name}.{child}")
    return names


def _apply_difffit(model: nn.Module) -> nn.Module:
    from .unet import norm_param

    freeze(model)
    train_params(model, lambda m, mod, p: p == "bias" or norm_param(m, mod, p))
    names = branch_output_names(model)
    if not names:
        raise MethodError(f"difffit: {type(model).__name__} has no transformer blocks (BasicTransformerBlock)")
    for name in names:
        lin = model.get_submodule(name)
        if type(lin) is not nn.Linear:
            raise MethodError(f"difffit: {name} is a {type(lin).__name__}, not a plain Linear")
        lin.__class__ = ScaledLinear
        lin.difffit_gamma = nn.Parameter(torch.ones(lin.out_features, device=lin.weight.device,
                                                    dtype=torch.float32))
    return model


@torch.no_grad()
def merge_difffit(model: nn.Module) -> nn.Module:
    for module in list(model.modules()):
        if isinstance(module, ScaledLinear):
            gamma = module.difffit_gamma.to(module.weight.dtype)
            module.weight.mul_(gamma[:, None])
            if module.bias is not None:
                module.bias.mul_(gamma)
            del module.difffit_gamma
            module.__class__ = nn.Linear
    return model


register(Method(
    name="difffit", families=("unet",), apply=_apply_difffit, merge=merge_difffit,
    summary="bias + norm + per-channel scale factors on transformer-block branches",
    paper="Xie et al., DiffFit, ICCV 2023", identity_at_init=True, paper_name=None))
