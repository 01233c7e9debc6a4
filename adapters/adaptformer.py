"""AdaptFormer (Chen et al., "AdaptFormer: Adapting Vision Transformers for Scalable Visual
Recognition", NeurIPS 2022): an AdaptMLP bottleneck branch in parallel with each block's MLP.

    mlp(x)  ->  mlp(x) + s * up(ReLU(down(x)))          x = the MLP's input, i.e. norm2(block input)

- trains: ``down`` (dim -> ``bottleneck``, default 64) and ``up`` (``bottleneck`` -> dim), weights and
  biases, in every block (+ head). Parameter names ``blocks.N.mlp.adapter.{down,up}.*``; with
  ``learnable_scale=True`` also ``blocks.N.mlp.adapter_scale`` (initialised to ``scale``).
- ``scale`` ``s`` = 0.1 (the paper's default), fixed. ``dropout`` (default 0.0) after the ReLU; the
  official code uses 0.1 there.
- init as the official code's ``lora`` option: ``down`` kaiming-uniform(a=sqrt(5)), ``up`` weight and
  both biases zero: the branch outputs 0 and the model is the base model at init.
- the branch reads the MLP's (``norm2``-ed) input, as in the paper's Eq. 1 (the official code feeds it
  the un-normalised residual stream instead). The block's ``ls2``/``drop_path2`` (LayerScale, stochastic
  depth) apply to the sum, since the wrapper takes the MLP's place.
- not mergeable: the ReLU branch cannot be folded into the frozen MLP.

Implementation: :class:`AdaptMLP` replaces ``block.mlp`` and keeps the frozen MLP as its child
``base`` (base parameters become ``blocks.N.mlp.base.fc1.weight``...).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .core import freeze, train_head, train_params
from .registry import Method, register


class Adapter(nn.Module):
    """down -> ReLU -> dropout -> up, ``up`` zero-initialised."""

    def __init__(self, dim: int, bottleneck: int, dropout: float = 0.0):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.act(self.down(x))))


class AdaptMLP(nn.Module):
    """A block's frozen MLP (``base``) with a parallel scaled :class:`Adapter` (``adapter``)."""

    def __init__(self, base: nn.Module, dim: int, bottleneck: int, scale: float, learnable_scale: bool,
                 dropout: float):
        super().__init__()
        self.base = base
        p = next(base.parameters())
        self.adapter = Adapter(dim, bottleneck, dropout).to(device=p.device, dtype=p.dtype)
        if learnable_scale:
            self.adapter_scale = nn.Parameter(torch.tensor(float(scale), device=p.device, dtype=p.dtype))
        else:
            self.adapter_scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.adapter_scale * self.adapter(x)


def _apply_adaptformer(model: nn.Module, bottleneck: int = 64, scale: float = 0.1, learnable_scale: bool = False,
                       dropout: float = 0.0) -> nn.Module:
    freeze(model)
    dim = model.embed_dim
    for block in model.blocks:
        if not isinstance(block.mlp, AdaptMLP):
            block.mlp = AdaptMLP(block.mlp, dim, bottleneck, scale, learnable_scale, dropout)
    train_params(model, lambda _n, m, p: isinstance(m, Adapter) or (isinstance(m, AdaptMLP) and p == "adapter_scale"))
    train_head(model)
    return model


register(Method(
    name="adaptformer", families=("vit",), apply=_apply_adaptformer, merge=None,
    defaults={"bottleneck": 64, "scale": 0.1, "learnable_scale": False, "dropout": 0.0},
    summary="parallel bottleneck MLP adapters (AdaptMLP) in every block + head",
    paper="Chen et al., AdaptFormer, NeurIPS 2022", identity_at_init=True, paper_name="adaptformer"))
