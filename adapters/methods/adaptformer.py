"""AdaptFormer (Chen et al., "AdaptFormer: Adapting Vision Transformers for Scalable Visual
Recognition", NeurIPS 2022): an AdaptMLP bottleneck branch in parallel with each block's MLP.

Default (``input="residual"``), as the official code runs it (``ffn_adapt``, ``ffn_option="parallel"``,
``ffn_adapter_layernorm_option="none"``): the branch reads the block's un-normalised residual stream
``x`` (the MLP sub-layer's input before ``norm2``) and is added outside the MLP's LayerScale/drop-path::

    x  ->  x + drop_path2(ls2(mlp(norm2(x)))) + s * up(dropout(ReLU(down(x))))

``input="norm"``: the branch reads ``norm2(x)``, as the paper's Eq. 1 writes it, and its output is added to
the MLP's (``ls2``/``drop_path2`` then apply to the sum)::

    mlp(h)  ->  mlp(h) + s * up(dropout(ReLU(down(h))))          h = norm2(x)

- trains: ``down`` (dim -> ``bottleneck``, default 64, the official ``ffn_num``) and ``up``
  (``bottleneck`` -> dim), weights and biases, in every block (+ head). Parameter names
  ``blocks.N.mlp.adapter.{down,up}.*``; with ``learnable_scale=True`` also ``blocks.N.mlp.adapter_scale``
  (initialised to ``scale``; the official ``ffn_adapter_scalar="learnable_scalar"`` initialises it to 1).
  ViT-B/16: 12 x 99,136 = 1,189,632 + head (the paper: 1.2M).
- ``scale`` ``s`` = 0.1 (the official ``ffn_adapter_scalar`` default), fixed. ``dropout`` = 0.1 after the
  ReLU (the official adapter's ``dropout=0.1``).
- init as the official ``ffn_adapter_init_option="lora"``: ``down`` kaiming-uniform(a=sqrt(5)), ``up``
  weight and both biases zero: the branch outputs 0 and the model is the base model at init.
- ``input="residual"`` needs timm's plain pre-norm ``Block`` (``norm1, attn, ls1, drop_path1, norm2, mlp,
  ls2, drop_path2``): its ``forward`` is re-done by :class:`ResidualAdaptBlock` (a class swap that keeps
  every parameter name); other block types raise :class:`adapters.MethodError` (use ``input="norm"``).
- not mergeable: the ReLU branch cannot be folded into the frozen MLP.

Implementation: :class:`AdaptMLP` replaces ``block.mlp`` and keeps the frozen MLP as its child
``base`` (base parameters become ``blocks.N.mlp.base.fc1.weight``...).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..core import MethodError, freeze, train_head, train_params
from ..registry import Method, register


class Adapter(nn.Module):
    """down -> ReLU -> dropout -> up, ``up`` zero-initialised."""

    def __init__(self, dim: int, bottleneck: int, dropout: float = 0.1):
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

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The scaled adapter branch alone."""
        return self.adapter_scale * self.adapter(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.branch(x)


class ResidualAdaptBlock:
    """Mixin for timm's ``Block`` whose ``mlp`` is an :class:`AdaptMLP`: the adapter branch reads the
    un-normalised residual stream (official ``ffn_adapter_layernorm_option="none"``)."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        return x + self.drop_path2(self.ls2(self.mlp.base(self.norm2(x)))) + self.mlp.branch(x)


_RESIDUAL_CLASSES: dict[type, type] = {}
_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


def _read_residual(block: nn.Module) -> None:
    cls = type(block)
    if issubclass(cls, ResidualAdaptBlock):
        return
    if cls.__name__ != "Block" or not all(hasattr(block, p) for p in _BLOCK_PARTS):
        raise MethodError(f"AdaptFormer input='residual' needs timm's pre-norm Block, not {cls.__name__}; "
                          "use input='norm'")
    if cls not in _RESIDUAL_CLASSES:
        _RESIDUAL_CLASSES[cls] = type(f"AdaptFormer{cls.__name__}", (ResidualAdaptBlock, cls), {})
    block.__class__ = _RESIDUAL_CLASSES[cls]


def _apply_adaptformer(model: nn.Module, bottleneck: int = 64, scale: float = 0.1, learnable_scale: bool = False,
                       dropout: float = 0.1, input: str = "residual") -> nn.Module:  # noqa: A002 - the option's name
    if input not in ("residual", "norm"):
        raise MethodError(f"AdaptFormer input must be 'residual' (official code) or 'norm' (paper Eq. 1), "
                          f"not {input!r}")
    freeze(model)
    dim = model.embed_dim
    for block in model.blocks:
        if not isinstance(block.mlp, AdaptMLP):
            block.mlp = AdaptMLP(block.mlp, dim, bottleneck, scale, learnable_scale, dropout)
        if input == "residual":
            _read_residual(block)
    train_params(model, lambda _n, m, p: isinstance(m, Adapter) or (isinstance(m, AdaptMLP) and p == "adapter_scale"))
    train_head(model)
    return model


register(Method(
    name="adaptformer", families=("vit",), apply=_apply_adaptformer, merge=None,
    defaults={"bottleneck": 64, "scale": 0.1, "learnable_scale": False, "dropout": 0.1, "input": "residual"},
    summary="parallel bottleneck MLP adapters (AdaptMLP) on the residual stream of every block + head",
    paper="Chen et al., AdaptFormer, NeurIPS 2022", identity_at_init=True, paper_name="adaptformer"))
