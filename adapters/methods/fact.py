"""FacT (Jie & Deng, "FacT: Factor-Tuning for Lightweight Adaptation on Vision Transformer", AAAI 2023;
official code JieShibo/PETL-ViT ``FacT/``): the weight increments of every ``qkv``, ``proj``, ``fc1`` and
``fc2`` of all blocks are stacked into one tensor and factorised, so all layers share two projections
``U`` (dim -> r, ``FacTu``) and ``V`` (r -> dim, ``FacTv``):

- ``fact_tt`` (tensor-train): each weight matrix has its own small core (``r x r`` for q, k, v, proj;
  ``r x kr`` / ``kr x r`` for fc1 / fc2 with MLP ratio ``k``); ``dW = V T U``.
- ``fact_tk`` (Tucker): one shared core ``FacTc`` (``r x r x r``) mixed per matrix by ``FacTp``
  (``r x (4 + 2k) * depth``): the core of matrix ``j`` is ``FacTc @ FacTp[:, j]``.

Each adapted Linear computes ``W x + s * dW x`` (dropout 0.1 inside the factor chain, as official).
The update is linear, so :func:`merge_method` adds ``s * dW`` to each weight exactly.

- trains: ``fact.*`` (U, V and the cores) (+ head). ViT-B/16: ``fact_tt`` r=8: 2 x 768 x 8 + 12 x 12 x 64
  = 21,504; ``fact_tk`` r=32: 2 x 768 x 32 + 32 x 144 + 32^3 = 86,528.
- hyper-parameters: ``rank`` (8 for TT, 32 for TK: the official configs' most common), ``scale`` (1.0 for
  TT, 0.1 for TK; the official configs pick it per dataset), ``dropout=0.1``.
- init as official: ``V`` zero (so the model is the base model at init), TT cores and ``U`` PyTorch's
  Linear default; TK ``FacTc``/``FacTp`` xavier-uniform.
- differences from the official code: the MLP ratio ``k`` is read from the model (the official code
  assumes 4); the update is added inside each Linear, which is where the official code adds it too.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..core import MethodError, freeze, train_head, train_params
from ..registry import Method, register
from .sites import DeltaLinear, unwrap_sites, vit_blocks

SITES = (("attn", "qkv"), ("attn", "proj"), ("mlp", "fc1"), ("mlp", "fc2"))


def _lin(i: int, o: int, like: torch.Tensor) -> nn.Linear:
    return nn.Linear(i, o, bias=False, device=like.device, dtype=like.dtype)


class FacT(nn.Module):
    """The shared factors of every block's weight increments (``model.fact``)."""

    def __init__(self, kind: str, dim: int, depth: int, ratio: int, rank: int, scale: float, dropout: float,
                 like: torch.Tensor):
        super().__init__()
        self.kind, self.dim, self.ratio, self.rank, self.scale, self.p = kind, dim, ratio, rank, float(scale), dropout
        self.FacTu, self.FacTv = _lin(dim, rank, like), _lin(rank, dim, like)
        nn.init.zeros_(self.FacTv.weight)
        if kind == "tt":
            self.cores = nn.ModuleList(nn.ModuleDict({
                "q": _lin(rank, rank, like), "k": _lin(rank, rank, like), "v": _lin(rank, rank, like),
                "proj": _lin(rank, rank, like), "fc1": _lin(rank, rank * ratio, like),
                "fc2": _lin(rank * ratio, rank, like)}) for _ in range(depth))
        else:
            self.slices = 4 + 2 * ratio
            self.FacTp = nn.Parameter(torch.empty(rank, self.slices * depth, device=like.device, dtype=like.dtype))
            self.FacTc = nn.Parameter(torch.empty(rank, rank, rank, device=like.device, dtype=like.dtype))
            nn.init.xavier_uniform_(self.FacTc)
            nn.init.xavier_uniform_(self.FacTp)

    def _dp(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p, self.training)

    def _tk_cores(self, i: int, start: int, n: int) -> torch.Tensor:
        s = i * self.slices + start
        return self.FacTc @ self.FacTp[:, s:s + n]  # [r, r, n]

    def delta(self, i: int, site: str, x: torch.Tensor) -> torch.Tensor:
        """``s * dW x`` for block ``i``'s Linear ``site`` (qkv, proj, fc1, fc2); ``x`` is its input."""
        u, v, r, k = self.FacTu, self.FacTv, self.rank, self.ratio
        lead = x.shape[:-1]
        if site == "fc2":  # input [.., k * dim] -> k chunks of dim, each projected by U
            ux = u(x.reshape(*lead, k, self.dim)).reshape(*lead, k * r)
        else:
            ux = u(x)
        if self.kind == "tt":
            c = self.cores[i]
            if site == "qkv":
                out = torch.cat([v(self._dp(c[n](ux))) for n in ("q", "k", "v")], dim=-1)
            elif site == "fc1":
                out = v(self._dp(c["fc1"](ux)).reshape(*lead, k, r)).reshape(*lead, k * self.dim)
            else:
                out = v(self._dp(c[site](ux)))
        elif site in ("qkv", "proj"):
            cores = self._tk_cores(i, 0, 4)
            if site == "qkv":
                out = torch.cat([v(self._dp(ux @ cores[:, :, j])) for j in range(3)], dim=-1)
            else:
                out = v(self._dp(ux @ cores[:, :, 3]))
        else:
            cores = self._tk_cores(i, 4, 2 * k)
            if site == "fc1":
                out = v(self._dp(ux @ cores[:, :, :k].reshape(r, r * k)).reshape(*lead, k, r)).reshape(*lead, k * self.dim)
            else:
                out = v(self._dp(ux @ cores[:, :, k:].reshape(r, r * k).T))
        return out * self.scale


def _apply(model: nn.Module, kind: str, rank: int, scale: float, dropout: float = 0.1) -> nn.Module:
    blocks = vit_blocks(model, f"fact_{kind}")
    if int(rank) < 1:
        raise MethodError(f"FacT rank must be >= 1, not {rank}")
    if hasattr(model, "fact"):
        raise MethodError("FacT is already applied to this model")
    dim = model.embed_dim
    for b in blocks:
        lins = [getattr(getattr(b, p), c, None) for p, c in SITES]
        if not all(isinstance(lin, nn.Linear) for lin in lins) or lins[0].out_features != 3 * dim:
            raise MethodError("FacT needs plain Linear qkv (3 x dim), proj, fc1 and fc2 in every block")
    hidden = blocks[0].mlp.fc1.out_features
    if hidden % dim:
        raise MethodError(f"FacT needs an MLP width that is a multiple of dim ({hidden} vs {dim})")
    freeze(model)
    model.fact = FacT(kind, dim, len(blocks), hidden // dim, int(rank), scale, dropout, next(model.parameters()))
    for i, b in enumerate(blocks):
        for parent, child in SITES:
            owner = getattr(b, parent)
            setattr(owner, child, DeltaLinear(getattr(owner, child), functools.partial(model.fact.delta, i, child)))
    train_params(model, lambda n, _m, _p: n == "fact" or n.startswith("fact."))
    train_head(model)
    return model


@torch.no_grad()
def _merge(model: nn.Module) -> nn.Module:
    model.eval()
    unwrap_sites(model, (DeltaLinear,))
    del model.fact
    return model


def _tt(model: nn.Module, **hp) -> nn.Module:
    return _apply(model, "tt", **hp)


def _tk(model: nn.Module, **hp) -> nn.Module:
    return _apply(model, "tk", **hp)


_PAPER = "Jie & Deng, FacT: Factor-Tuning for Lightweight Adaptation on Vision Transformer, AAAI 2023"
register(Method(
    name="fact_tt", families=("vit",), apply=_tt, merge=_merge, defaults={"rank": 8, "scale": 1.0, "dropout": 0.1},
    summary="tensor-train factorised increments of every qkv/proj/fc1/fc2, shared U/V (FacT-TT) + head",
    paper=_PAPER, identity_at_init=True))
register(Method(
    name="fact_tk", families=("vit",), apply=_tk, merge=_merge, defaults={"rank": 32, "scale": 0.1, "dropout": 0.1},
    summary="Tucker-factorised increments of every qkv/proj/fc1/fc2, shared core (FacT-TK) + head",
    paper=_PAPER, identity_at_init=True))
