"""Bottleneck adapters: ``adapter_houlsby`` (Houlsby et al., "Parameter-Efficient Transfer Learning for
NLP", ICML 2019) and ``adapter_pfeiffer`` (Pfeiffer et al., "AdapterFusion: Non-Destructive Task
Composition for Transfer Learning", EACL 2021), as the OSU ViT_PEFT_Vision code runs them on a ViT.

Each adapter is ``h + s * up(dropout(ReLU(down(h))))`` applied to a sub-layer's output ``h``
(``ft_*_mode="sequential_after"``, ``add_residual=True``), inside the block's LayerScale and drop-path:

    x  ->  x + drop_path(ls(adapter(attn(norm1(x)))))        Houlsby: after attention and after the MLP
    x  ->  x + drop_path(ls(adapter(mlp(norm2(x)))))         Pfeiffer: after the MLP only

- trains: ``down`` (dim -> ``bottleneck``) and ``up`` (``bottleneck`` -> dim), weights and biases, of every
  adapter (+ head); ``blocks.N.{attn,mlp}.branch.{down,up}.*``. ViT-B/16, bottleneck 8: Houlsby
  2 x 12 x 13,064 = 313,536; Pfeiffer 156,768 (+ head).
- hyper-parameters: ``bottleneck=8``, ``scale=1.0`` (Houlsby's adapters have no scale; OSU searches
  ``adapter_scaler`` in 0.01..10), ``dropout=0.1`` (OSU's fixed adapter dropout).
- init: ``down`` xavier-uniform, ``up`` and both biases zero (OSU's ``lora_xavier``; Houlsby's
  near-identity init): the model is the base model at init. Difference from official code: OSU's
  ``rand_h_adapter``/``rand_p_adapter`` configs use a random (``xavier``) ``up`` instead, which is not
  identity at init; Pfeiffer's NLP adapter also has extra LayerNorms/residual options not used on ViTs.
- not mergeable (the ReLU).
Register tokens and LayerScale: tokens are adapted one by one, inside ``ls1``/``ls2``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..core import MethodError, freeze, train_head, train_params
from ..registry import Method, register
from .sites import OutputAdapter, vit_blocks


class Bottleneck(nn.Module):
    def __init__(self, dim: int, bottleneck: int, scale: float, dropout: float, like: torch.Tensor):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck, device=like.device, dtype=like.dtype)
        self.up = nn.Linear(bottleneck, dim, device=like.device, dtype=like.dtype)
        self.act, self.dropout, self.scale = nn.ReLU(), nn.Dropout(dropout), float(scale)
        with torch.no_grad():
            nn.init.xavier_uniform_(self.down.weight)
            for t in (self.down.bias, self.up.weight, self.up.bias):
                nn.init.zeros_(t)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.act(self.down(h)))) * self.scale


def _apply(model: nn.Module, sites: tuple[str, ...], bottleneck: int = 8, scale: float = 1.0,
           dropout: float = 0.1) -> nn.Module:
    if int(bottleneck) < 1:
        raise MethodError(f"bottleneck must be >= 1, not {bottleneck}")
    blocks = vit_blocks(model, "adapter")
    freeze(model)
    like = next(model.parameters())
    for block in blocks:
        for site in sites:
            if isinstance(getattr(block, site), OutputAdapter):
                raise MethodError("a bottleneck adapter is already applied to this model")
            setattr(block, site, OutputAdapter(getattr(block, site),
                                               Bottleneck(model.embed_dim, int(bottleneck), scale, dropout, like)))
    train_params(model, lambda _n, m, _p: isinstance(m, nn.Linear) and _n.endswith(("branch.down", "branch.up")))
    train_head(model)
    return model


def _houlsby(model: nn.Module, **hp) -> nn.Module:
    return _apply(model, ("attn", "mlp"), **hp)


def _pfeiffer(model: nn.Module, **hp) -> nn.Module:
    return _apply(model, ("mlp",), **hp)


_DEFAULTS = {"bottleneck": 8, "scale": 1.0, "dropout": 0.1}
register(Method(
    name="adapter_houlsby", families=("vit",), apply=_houlsby, merge=None, defaults=dict(_DEFAULTS),
    summary="sequential bottleneck adapters after attention and MLP of every block + head",
    paper="Houlsby et al., Parameter-Efficient Transfer Learning for NLP, ICML 2019", identity_at_init=True))
register(Method(
    name="adapter_pfeiffer", families=("vit",), apply=_pfeiffer, merge=None, defaults=dict(_DEFAULTS),
    summary="sequential bottleneck adapter after the MLP of every block + head",
    paper="Pfeiffer et al., AdapterFusion, EACL 2021", identity_at_init=True))
