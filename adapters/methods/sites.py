"""Where hand-written ViT methods attach to a timm block, shared by the method files (no method here).

A timm pre-norm ``Block`` computes ``x + drop_path1(ls1(attn(norm1(x))))`` then
``x + drop_path2(ls2(mlp(norm2(x))))``. Methods that wrap ``attn``/``mlp`` (or a Linear inside them)
therefore act *inside* LayerScale (``ls1``/``ls2``) and drop-path, as the official PETL code places them
(OSU ViT_PEFT_Vision ``BlockPETL``: ``drop_path(ls(module(...)))``), and tokens are handled one by one, so
register tokens (``num_prefix_tokens``) need nothing special. Methods that reshape tokens into the patch
grid (Convpass, Mona) use :func:`split_tokens` / :func:`merge_tokens`: the first ``num_prefix_tokens``
tokens (class + register tokens) are each treated as a 1x1 image, as Convpass' official code treats the
class token.

- :class:`OutputAdapter`   ``h = module(x); h + branch(h)``         (sequential adapters: Houlsby, Pfeiffer)
- :class:`ParallelBranch`  ``module(x) + branch(x)``                 (Convpass)
- :class:`DeltaLinear`     ``linear(x) + delta(x)``, ``delta`` linear (FacT); merges exactly
- :class:`InputLinear`     ``linear(x + adapter(x))``, ``adapter`` affine (RepAdapter); merges exactly
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..core import MethodError, replace_module

BLOCK_PARTS = ("norm1", "attn", "norm2", "mlp")


def vit_blocks(model: nn.Module, method: str) -> list[nn.Module]:
    """The model's transformer blocks, checked to be timm pre-norm blocks (attn + mlp sub-layers)."""
    blocks = list(getattr(model, "blocks", []))
    bad = [type(b).__name__ for b in blocks if not all(hasattr(b, p) for p in BLOCK_PARTS)]
    if not blocks or bad:
        raise MethodError(f"{method} needs timm ViT blocks with norm1/attn/norm2/mlp, not {bad[:1] or 'none'}")
    if getattr(model, "dynamic_img_size", False) and method in ("convpass", "mona"):
        raise MethodError(f"{method} reshapes tokens to the patch grid: ViTs built with dynamic_img_size=True "
                          "are not supported")
    return blocks


def grid_of(model: nn.Module) -> tuple[int, int]:
    return tuple(model.patch_embed.grid_size)


def split_tokens(x: torch.Tensor, num_prefix: int, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, P + H*W, C]`` -> (prefix tokens as ``[B*P, C, 1, 1]``, patch tokens as ``[B, C, H, W]``)."""
    b, n, c = x.shape
    h, w = grid
    if n != num_prefix + h * w:
        raise MethodError(f"{n} tokens do not make {num_prefix} prefix tokens + a {h}x{w} patch grid "
                          "(another image size than the model was built for?)")
    prefix = x[:, :num_prefix].reshape(b * num_prefix, c, 1, 1)
    patches = x[:, num_prefix:].transpose(1, 2).reshape(b, c, h, w)
    return prefix, patches


def merge_tokens(prefix: torch.Tensor, patches: torch.Tensor, batch: int) -> torch.Tensor:
    """Inverse of :func:`split_tokens`."""
    c = patches.shape[1]
    return torch.cat([prefix.reshape(batch, -1, c), patches.flatten(2).transpose(1, 2)], dim=1)


class OutputAdapter(nn.Module):
    """``module`` followed by a residual branch on its output: ``h + branch(h)``."""

    def __init__(self, base: nn.Module, branch: nn.Module):
        super().__init__()
        self.base, self.branch = base, branch

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        h = self.base(x, *args, **kwargs)
        return h + self.branch(h)


class ParallelBranch(nn.Module):
    """``module(x) + branch(x)``."""

    def __init__(self, base: nn.Module, branch: nn.Module):
        super().__init__()
        self.base, self.branch = base, branch

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.base(x, *args, **kwargs) + self.branch(x)


def _affine_as_linear(fn: Callable[[torch.Tensor], torch.Tensor], n_in: int, like: torch.Tensor):
    """(W, b) with ``fn(x) == x @ W.T + b`` for an affine ``fn`` on the last dimension (read off fn(0),
    fn(e_i))."""
    eye = torch.eye(n_in, device=like.device, dtype=like.dtype)[None]
    zero = torch.zeros(1, 1, n_in, device=like.device, dtype=like.dtype)
    b = fn(zero)[0, 0]
    return (fn(eye)[0] - b).T, b


class DeltaLinear(nn.Module):
    """A frozen Linear plus a linear update computed by ``delta(x, site)`` (no bias)."""

    def __init__(self, base: nn.Linear, delta: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.base = base
        self.delta = delta  # a bound method of the owner of the trained tensors (not a submodule)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.delta(x)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        w, _ = _affine_as_linear(self.delta, self.base.in_features, self.base.weight)
        out = _copy_linear(self.base)
        out.weight += w.to(out.weight.dtype)
        return out


class InputLinear(nn.Module):
    """A frozen Linear reading ``x + adapter(x)`` (an affine adapter, e.g. RepAdapter's)."""

    def __init__(self, base: nn.Linear, adapter: nn.Module):
        super().__init__()
        self.base, self.adapter = base, adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x + self.adapter(x))

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """``W (x + A x + a) + b = (W + W A) x + (b + W a)``: the re-parameterised Linear."""
        a_w, a_b = _affine_as_linear(self.adapter, self.base.in_features, self.base.weight)
        out = _copy_linear(self.base, bias=True)
        w = self.base.weight
        out.weight.copy_(w + w @ a_w)
        out.bias.copy_((self.base.bias if self.base.bias is not None else 0) + w @ a_b)
        return out


def _copy_linear(lin: nn.Linear, bias: bool | None = None) -> nn.Linear:
    bias = lin.bias is not None if bias is None else bias
    out = nn.Linear(lin.in_features, lin.out_features, bias=bias, device=lin.weight.device, dtype=lin.weight.dtype)
    out.weight.copy_(lin.weight)
    if bias:
        out.bias.copy_(lin.bias if lin.bias is not None else torch.zeros_like(out.bias))
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def unwrap_sites(model: nn.Module, types: tuple[type, ...]) -> nn.Module:
    """Replace every wrapper of ``types`` by its merged Linear (``merged()``) or its ``base``; the result
    has the base model's module tree again."""
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, types)]:
        replace_module(model, name, module.merged() if hasattr(module, "merged") else module.base)
    return model
