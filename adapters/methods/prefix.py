"""Prefix tuning (Li & Liang, "Prefix-Tuning: Optimizing Continuous Prompts for Generation", ACL 2021) on a
ViT: every attention block gets ``num_prefix`` learned key and value vectors that every token can attend
to (the keys/values of ``num_prefix`` virtual tokens; queries, the token sequence and its length are
unchanged, unlike VPT):

    attn(x) = proj(softmax(q [P_k; k]^T / sqrt(d)) [P_v; v])

- trains: ``blocks.N.attn.prefix_k`` and ``prefix_v`` (``[num_prefix, dim]`` each, split over the heads
  like timm's qkv) (+ head). ViT-B/16, 10 prefixes: 12 x 2 x 10 x 768 = 184,320.
- hyper-parameters: ``num_prefix=10``, ``dropout=0.0`` (on the prefixes).
- init: normal(0, 0.02). Li & Liang train the prefixes through a re-parameterising MLP for stability on
  language models; here they are trained directly (peft's ``prefix_projection=False``). Not the base
  model at init (the prefixes take part of the attention).
- the key prefixes go through timm's ``k_norm`` with the keys (QK-norm models); register tokens and
  LayerScale are untouched (the sequence is not changed; ``ls1`` scales the attention output as before).
- attention masks / causal attention are refused (timm's classifiers use neither). Not mergeable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core import MethodError, add_mixin, freeze, is_vit_attention, train_head, train_params
from ..registry import Method, register
from .sites import vit_blocks


class PrefixAttention:
    """Mixin for timm's ``Attention``: learned key/value prefixes in front of the keys and values."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise MethodError("prefix tuning does not support attention masks")
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        heads = lambda p: self.prefix_dropout(p).reshape(1, -1, self.num_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        k = torch.cat([heads(self.prefix_k).expand(b, -1, -1, -1), k], dim=2)
        v = torch.cat([heads(self.prefix_v).expand(b, -1, -1, -1), v], dim=2)
        q, k = self.q_norm(q), self.k_norm(k)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        x = self.norm(x.transpose(1, 2).reshape(b, n, -1))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


def _apply(model: nn.Module, num_prefix: int = 10, dropout: float = 0.0) -> nn.Module:
    blocks = vit_blocks(model, "prefix_tuning")
    if int(num_prefix) < 1:
        raise MethodError(f"num_prefix must be >= 1, not {num_prefix}")
    attns = [b.attn for b in blocks]
    if not all(is_vit_attention("", a) and type(a).__name__ == "Attention" for a in attns):
        raise MethodError(f"prefix tuning needs timm's Attention, not {type(attns[0]).__name__}")
    freeze(model)
    for a in attns:
        if isinstance(a, PrefixAttention):
            raise MethodError("prefix tuning is already applied to this model")
        w = a.qkv.weight
        dim = a.num_heads * a.head_dim
        for name in ("prefix_k", "prefix_v"):
            setattr(a, name, nn.Parameter(torch.randn(int(num_prefix), dim, device=w.device, dtype=w.dtype) * 0.02))
        a.prefix_dropout = nn.Dropout(dropout)
        add_mixin(a, PrefixAttention, "Prefix")
    train_params(model, lambda _n, m, p: isinstance(m, PrefixAttention) and p in ("prefix_k", "prefix_v"))
    train_head(model)
    return model


register(Method(
    name="prefix_tuning", families=("vit",), apply=_apply, merge=None, defaults={"num_prefix": 10, "dropout": 0.0},
    summary="learned key/value prefixes in every attention block + head",
    paper="Li & Liang, Prefix-Tuning, ACL 2021", identity_at_init=False))
