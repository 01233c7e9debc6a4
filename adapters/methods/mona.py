"""Mona (Yin et al., "5%>100%: Breaking Performance Shackles of Full Fine-Tuning on Visual Recognition
Tasks", CVPR 2025; official code Leiyi-Hu/mona): a multi-cognitive visual adapter on the residual stream
after each block's attention and after its MLP:

    x = x + drop_path1(ls1(attn(norm1(x))));  x = mona1(x)
    x = x + drop_path2(ls2(mlp(norm2(x))));   x = mona2(x)

``mona(x) = x + up(dropout(GELU(op(down(LN(x) * gamma + x * gammax)))))`` where ``down`` is dim ->
``bottleneck`` (64), ``up`` the reverse, and ``op`` runs on the patch grid: the average of depthwise 3x3,
5x5 and 7x7 convolutions plus a skip, then a 1x1 projection plus a skip (the official ``MonaOp``).
Prefix tokens (class, register tokens) go through ``op`` one by one as 1x1 images.

- trains: every Mona's LayerNorm, ``gamma`` (init 1e-6), ``gammax`` (init 1), ``down``, ``up`` and
  ``op`` convolutions (+ head). ViT-B/16: 24 Monas x 111,872 = 2,684,928.
- hyper-parameters: ``bottleneck=64`` (official, fixed there), ``dropout=0.1`` (official).
- init as the official code (PyTorch defaults for the Linears and convolutions): *not* the base model
  at init (``up`` is not zero); the invariant tests check that the output differs.
- differences from the official code: the official Mona is inserted in Swin blocks (``hw_shape`` from
  the window layout); here it is a plain ViT's patch grid (``patch_embed.grid_size``), plus the prefix
  token handling above. LayerScale stays on the attention/MLP branches, as in the model.
- not mergeable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core import MethodError, add_mixin, freeze, train_head, train_params
from ..registry import Method, register
from .sites import grid_of, merge_tokens, split_tokens, vit_blocks

_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


class MonaOp(nn.Module):
    def __init__(self, c: int, like: torch.Tensor):
        super().__init__()
        kw = dict(device=like.device, dtype=like.dtype)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, groups=c, **kw)
        self.conv2 = nn.Conv2d(c, c, 5, padding=2, groups=c, **kw)
        self.conv3 = nn.Conv2d(c, c, 7, padding=3, groups=c, **kw)
        self.projector = nn.Conv2d(c, c, 1, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (self.conv1(x) + self.conv2(x) + self.conv3(x)) / 3.0 + x
        return x + self.projector(x)


class Mona(nn.Module):
    def __init__(self, dim: int, bottleneck: int, dropout: float, num_prefix: int, grid, like: torch.Tensor):
        super().__init__()
        kw = dict(device=like.device, dtype=like.dtype)
        self.project1 = nn.Linear(dim, bottleneck, **kw)
        self.project2 = nn.Linear(bottleneck, dim, **kw)
        self.adapter_conv = MonaOp(bottleneck, like)
        self.norm = nn.LayerNorm(dim, **kw)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6, **kw))
        self.gammax = nn.Parameter(torch.ones(dim, **kw))
        self.dropout, self.num_prefix, self.grid = nn.Dropout(dropout), num_prefix, grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.project1(self.norm(x) * self.gamma + x * self.gammax)
        prefix, patches = split_tokens(h, self.num_prefix, self.grid)
        h = merge_tokens(self.adapter_conv(prefix), self.adapter_conv(patches), x.shape[0])
        return x + self.project2(self.dropout(F.gelu(h)))


class MonaBlock:
    """Mixin for timm's pre-norm ``Block``: a Mona after each residual addition."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        x = self.mona1(x)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return self.mona2(x)


def _apply(model: nn.Module, bottleneck: int = 64, dropout: float = 0.1) -> nn.Module:
    blocks = vit_blocks(model, "mona")
    bad = [type(b).__name__ for b in blocks if type(b).__name__ != "Block" or not all(hasattr(b, p) for p in _PARTS)]
    if bad:
        raise MethodError(f"Mona needs timm's pre-norm Block, not {bad[0]}")
    freeze(model)
    like, grid = next(model.parameters()), grid_of(model)
    for b in blocks:
        for n in ("mona1", "mona2"):
            setattr(b, n, Mona(model.embed_dim, int(bottleneck), dropout, model.num_prefix_tokens, grid, like))
        add_mixin(b, MonaBlock, "Mona")
    train_params(model, lambda n, _m, _p: ".mona1" in f".{n}" or ".mona2" in f".{n}")
    train_head(model)
    return model


register(Method(
    name="mona", families=("vit",), apply=_apply, merge=None, defaults={"bottleneck": 64, "dropout": 0.1},
    summary="multi-cognitive adapters (LN-scaled bottleneck with 3/5/7 depthwise convs) after attention and MLP + head",
    paper="Yin et al., 5%>100% (Mona), CVPR 2025", identity_at_init=False))
