"""Visual Prompt Tuning (Jia et al., "Visual Prompt Tuning", ECCV 2022).

Learnable prompt tokens join the token sequence after the class (and register) tokens, after the
position embedding (prompts carry no position) and ``norm_pre``:

    [cls, (reg), patches]  ->  [cls, (reg), p_1 .. p_P, patches]

- ``vpt_shallow``  one set of ``num_prompts`` prompts (``norm_pre.prompt``), inserted before block 0.
- ``vpt_deep``     additionally, every block ``i >= 1`` has its own prompts (``blocks.i.prompt``) that
  *replace* the previous block's prompt outputs at its input.

Trains the prompts (+ head). Init uniform(-v, v), v = sqrt(6 / (3 * patch_h * patch_w + dim)), as in
VPT's code; ``dropout`` (default 0.0) on the prompts as VPT's ``prompt_dropout``. Hyper-parameters:
``num_prompts=10``, ``dropout=0.0``.

``model.num_prefix_tokens`` grows by ``num_prompts``, so timm's ``avg`` pooling (and
``forward_intermediates``) skip the prompts; ``token`` pooling still reads index 0, the class token.
Not identity at init (the prompts enter attention); not mergeable (extra tokens are extra compute).
Models with ``dynamic_img_size=True`` are refused: timm resamples position embeddings there with
``num_prefix_tokens``.

Implementation: ``model.norm_pre`` becomes :class:`PromptedNormPre` (original as child ``norm``);
for deep, ``blocks[i]`` (i >= 1) becomes :class:`DeepPromptBlock` (original as child ``block``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..core import MethodError, freeze, train_head, train_params
from ..registry import Method, register


def _prompt(num_prompts: int, dim: int, patch_size, like: torch.Tensor) -> nn.Parameter:
    v = math.sqrt(6.0 / float(3 * math.prod(patch_size) + dim))
    p = torch.empty(1, num_prompts, dim, device=like.device, dtype=like.dtype)
    nn.init.uniform_(p, -v, v)
    return nn.Parameter(p)


class PromptedNormPre(nn.Module):
    """``norm_pre``, then ``prompt`` inserted after the first ``num_prefix`` tokens."""

    def __init__(self, norm: nn.Module, prompt: nn.Parameter, num_prefix: int, dropout: float):
        super().__init__()
        self.norm = norm
        self.prompt = prompt
        self.num_prefix = num_prefix
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        p = self.dropout(self.prompt.expand(x.shape[0], -1, -1))
        return torch.cat([x[:, :self.num_prefix], p, x[:, self.num_prefix:]], dim=1)


class DeepPromptBlock(nn.Module):
    """A transformer block whose input prompt tokens are replaced by this layer's own ``prompt``."""

    def __init__(self, block: nn.Module, prompt: nn.Parameter, num_prefix: int, dropout: float):
        super().__init__()
        self.block = block
        self.prompt = prompt
        self.num_prefix = num_prefix
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        start, end = self.num_prefix, self.num_prefix + self.prompt.shape[1]
        p = self.dropout(self.prompt.expand(x.shape[0], -1, -1))
        return self.block(torch.cat([x[:, :start], p, x[:, end:]], dim=1), *args, **kwargs)


def _apply_vpt(model: nn.Module, num_prompts: int = 10, dropout: float = 0.0, deep: bool = False) -> nn.Module:
    if num_prompts < 1:
        raise MethodError(f"num_prompts must be >= 1, not {num_prompts}")
    if getattr(model, "dynamic_img_size", False) and not getattr(model, "prefix_safe_pos_embed", False):
        raise MethodError("VPT does not support ViTs built with dynamic_img_size=True")  # (foundation presets are)
    if isinstance(model.norm_pre, PromptedNormPre):
        raise MethodError("VPT is already applied to this model")
    freeze(model)
    dim, patch, like = model.embed_dim, model.patch_embed.patch_size, next(model.parameters())
    num_prefix = model.num_prefix_tokens
    model.norm_pre = PromptedNormPre(model.norm_pre, _prompt(num_prompts, dim, patch, like), num_prefix, dropout)
    if deep:
        for i in range(1, len(model.blocks)):
            model.blocks[i] = DeepPromptBlock(model.blocks[i], _prompt(num_prompts, dim, patch, like), num_prefix,
                                              dropout)
    model.num_prefix_tokens = num_prefix + num_prompts
    train_params(model, lambda _n, m, p: isinstance(m, (PromptedNormPre, DeepPromptBlock)) and p == "prompt")
    train_head(model)
    return model


def _apply_shallow(model: nn.Module, **hp) -> nn.Module:
    return _apply_vpt(model, deep=False, **hp)


def _apply_deep(model: nn.Module, **hp) -> nn.Module:
    return _apply_vpt(model, deep=True, **hp)


register(Method(
    name="vpt_shallow", families=("vit",), apply=_apply_shallow, merge=None,
    defaults={"num_prompts": 10, "dropout": 0.0}, summary="learnable prompt tokens at the input + head",
    paper="Jia et al., Visual Prompt Tuning, ECCV 2022", paper_name=None))
register(Method(
    name="vpt_deep", families=("vit",), apply=_apply_deep, merge=None,
    defaults={"num_prompts": 10, "dropout": 0.0}, summary="learnable prompt tokens at every block's input + head",
    paper="Jia et al., Visual Prompt Tuning, ECCV 2022", paper_name=None))
