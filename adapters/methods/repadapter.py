"""RepAdapter (Luo et al., "Towards Efficient Visual Adaption via Structural Re-parameterization", 2023;
official code luogen1996/RepAdapter): a linear adapter before each block's attention and MLP, folded into
the following Linear at merge, so the merged model costs exactly the base model at inference.

    attn(norm1(x))  ->  attn(h + s * B(dropout(A(h))))        h = norm1(x)   (same before the MLP)

``A`` is a 1x1 conv dim -> ``bottleneck``, ``B`` a *grouped* 1x1 conv ``bottleneck`` -> dim with ``groups``
groups (the official ``conv_A``/``conv_B``), both with bias. Everything is linear (dropout is off in
eval), so the adapter is an affine map ``h -> h + M h + m`` and ``W (h + M h + m) + b`` re-parameterises into
one Linear ``(W + W M) h + (b + W m)``: :func:`merge_method` replaces each adapted ``qkv``/``fc1`` by it.

- trains: ``A`` and ``B`` (weights and biases) before ``attn.qkv`` and ``mlp.fc1`` of every block (+ head).
  ViT-B/16, bottleneck 8, groups 2: 2 x 12 x (6,152 + 3,840) = 239,808.
- hyper-parameters: ``bottleneck=8``, ``groups=2``, ``scale=1.0`` (the official configs choose ``s`` per
  dataset, 0.1..10), ``dropout=0.1``.
- init as the official code: ``A`` xavier-uniform, ``B`` weight and both biases zero: the base model at
  init.
- differences from the official code: the adapter wraps the first Linear of each sub-layer (``qkv``,
  ``fc1``) instead of the block's ``norm1``/``norm2`` output; the same computation, and it keeps
  LayerScale and register tokens untouched (the adapter is token-wise).
"""
from __future__ import annotations

import torch
from torch import nn

from ..core import MethodError, freeze, train_head, train_params
from ..registry import Method, register
from .sites import InputLinear, unwrap_sites, vit_blocks


class RepAdapter(nn.Module):
    def __init__(self, dim: int, bottleneck: int, groups: int, scale: float, dropout: float, like: torch.Tensor):
        super().__init__()
        if bottleneck % groups or dim % groups:
            raise MethodError(f"RepAdapter groups={groups} must divide bottleneck={bottleneck} and dim={dim}")
        kw = dict(device=like.device, dtype=like.dtype)
        self.conv_A = nn.Conv1d(dim, bottleneck, 1, **kw)
        self.conv_B = nn.Conv1d(bottleneck, dim, 1, groups=groups, **kw)
        self.dropout, self.scale = nn.Dropout(dropout), float(scale)
        with torch.no_grad():
            nn.init.xavier_uniform_(self.conv_A.weight)
            for t in (self.conv_A.bias, self.conv_B.weight, self.conv_B.bias):
                nn.init.zeros_(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(-1, -2)
        return self.conv_B(self.dropout(self.conv_A(h))).transpose(-1, -2) * self.scale


def _apply(model: nn.Module, bottleneck: int = 8, groups: int = 2, scale: float = 1.0,
           dropout: float = 0.1) -> nn.Module:
    blocks = vit_blocks(model, "repadapter")
    freeze(model)
    like = next(model.parameters())
    for block in blocks:
        for parent, child in ((block.attn, "qkv"), (block.mlp, "fc1")):
            lin = getattr(parent, child, None)
            if not isinstance(lin, nn.Linear):
                raise MethodError(f"RepAdapter needs a plain Linear {child}, found {type(lin).__name__}")
            setattr(parent, child, InputLinear(lin, RepAdapter(lin.in_features, int(bottleneck), int(groups),
                                                                scale, dropout, like)))
    train_params(model, lambda _n, m, _p: isinstance(m, nn.Conv1d) and _n.endswith((".conv_A", ".conv_B")))
    train_head(model)
    return model


@torch.no_grad()
def _merge(model: nn.Module) -> nn.Module:
    model.eval()
    return unwrap_sites(model, (InputLinear,))


register(Method(
    name="repadapter", families=("vit",), apply=_apply, merge=_merge,
    defaults={"bottleneck": 8, "groups": 2, "scale": 1.0, "dropout": 0.1},
    summary="linear (grouped) adapters before attention and MLP, re-parameterised into qkv/fc1 at merge + head",
    paper="Luo et al., Towards Efficient Visual Adaption via Structural Re-parameterization (RepAdapter), 2023",
    identity_at_init=True))
