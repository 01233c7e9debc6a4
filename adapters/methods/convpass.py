"""Convpass (Jie & Deng, "Convolutional Bypasses Are Better Vision Transformer Adapters", 2022; official
code JieShibo/PETL-ViT ``convpass/``): a convolutional bypass in parallel with each block's attention and
MLP, reading the same normalised input:

    x  ->  x + drop_path(ls1(attn(n1) + s * convpass(n1)))      n1 = norm1(x)   (same for the MLP)

``convpass(h) = up(dropout(QuickGELU(conv3x3(QuickGELU(down(h))))))``: ``down`` (dim -> ``bottleneck``),
a 3x3 convolution over the patch grid (``bottleneck`` -> ``bottleneck``; each prefix token, the class
token and any register tokens, goes through it alone as a 1x1 image, as the official code does with the
class token), ``up`` (``bottleneck`` -> dim).

- trains: ``down``, ``conv``, ``up`` (weights and biases) of both bypasses of every block (+ head).
  ViT-B/16, bottleneck 8: 2 x 12 x 13,648 = 327,552 (the paper: 0.33M).
- hyper-parameters: ``bottleneck=8`` (the official ``dim=8``), ``scale=1.0`` (the official configs pick
  ``s`` per dataset from 0.01..100), ``xavier_init=False``, ``dropout=0.1``.
- init as the official code: ``down`` xavier-uniform, ``up`` weight and all biases zero; the conv is the
  identity (zero kernel with an identity centre tap), or xavier-uniform with ``xavier_init=True``. The
  bypass outputs 0, so the model is the base model at init.
- differences from the official code: the bypass is added inside LayerScale (``ls1``/``ls2``, as OSU's
  ViT_PEFT_Vision places it; the official ViT-B has no LayerScale), and the grid comes from the model's
  ``patch_embed.grid_size`` instead of a fixed 14x14.
- not mergeable (non-linear bypass).
"""
from __future__ import annotations

import torch
from torch import nn

from ..core import MethodError, freeze, train_head, train_params
from ..registry import Method, register
from .sites import ParallelBranch, grid_of, merge_tokens, split_tokens, vit_blocks


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Convpass(nn.Module):
    def __init__(self, dim: int, bottleneck: int, scale: float, xavier_init: bool, dropout: float,
                 num_prefix: int, grid: tuple[int, int], like: torch.Tensor):
        super().__init__()
        kw = dict(device=like.device, dtype=like.dtype)
        self.down = nn.Linear(dim, bottleneck, **kw)
        self.conv = nn.Conv2d(bottleneck, bottleneck, 3, 1, 1, **kw)
        self.up = nn.Linear(bottleneck, dim, **kw)
        self.act, self.dropout = QuickGELU(), nn.Dropout(dropout)
        self.scale, self.num_prefix, self.grid = float(scale), num_prefix, grid
        with torch.no_grad():
            if xavier_init:
                nn.init.xavier_uniform_(self.conv.weight)
            else:
                nn.init.zeros_(self.conv.weight)
                self.conv.weight[:, :, 1, 1] += torch.eye(bottleneck, **kw)
            nn.init.xavier_uniform_(self.down.weight)
            for t in (self.conv.bias, self.down.bias, self.up.weight, self.up.bias):
                nn.init.zeros_(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.down(x))
        prefix, patches = split_tokens(h, self.num_prefix, self.grid)
        h = merge_tokens(self.conv(prefix), self.conv(patches), x.shape[0])
        return self.up(self.dropout(self.act(h))) * self.scale


def _apply(model: nn.Module, bottleneck: int = 8, scale: float = 1.0, xavier_init: bool = False,
           dropout: float = 0.1) -> nn.Module:
    if int(bottleneck) < 1:
        raise MethodError(f"bottleneck must be >= 1, not {bottleneck}")
    blocks = vit_blocks(model, "convpass")
    freeze(model)
    like, grid = next(model.parameters()), grid_of(model)
    for block in blocks:
        for site in ("attn", "mlp"):
            if isinstance(getattr(block, site), ParallelBranch):
                raise MethodError("Convpass is already applied to this model")
            setattr(block, site, ParallelBranch(getattr(block, site), Convpass(
                model.embed_dim, int(bottleneck), scale, bool(xavier_init), dropout, model.num_prefix_tokens, grid,
                like)))
    train_params(model, lambda _n, m, _p: _n.split(".")[-2:-1] == ["branch"] and isinstance(m, (nn.Linear, nn.Conv2d)))
    train_head(model)
    return model


register(Method(
    name="convpass", families=("vit",), apply=_apply, merge=None,
    defaults={"bottleneck": 8, "scale": 1.0, "xavier_init": False, "dropout": 0.1},
    summary="convolutional bypasses (1x1-3x3-1x1 over the patch grid) beside attention and MLP + head",
    paper="Jie & Deng, Convolutional Bypasses Are Better Vision Transformer Adapters, 2022", identity_at_init=True))
