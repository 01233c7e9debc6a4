"""SVDiff: spectral-shift fine-tuning (Han et al., "SVDiff: Compact Parameter Space for Diffusion
Fine-Tuning", ICCV 2023).

Each targeted weight ``W`` (a Conv2d kernel is reshaped to ``[out, in * kh * kw]``) is decomposed once,
``W = U diag(sigma) V^T`` (``torch.linalg.svd``, reduced), and only the spectral shift ``delta``
(``min(out, in * kh * kw)`` values, init 0) trains:

    W' = U diag(ReLU(sigma + delta)) V^T

MedPEFT computes it in the *exact* form ``W' = W + U diag(ReLU(sigma + delta) - sigma) V^T``: at
``delta = 0`` the correction is exactly zero (``ReLU(sigma) = sigma`` as ``sigma >= 0``), so the layer
is bit-identical to the base layer at init, instead of carrying the ~1e-6 error of re-multiplying
``U diag(sigma) V^T``. For any ``delta`` both forms are the same function (up to fp32 rounding).

The layers keep their class family and names: an ``nn.Linear`` becomes an :class:`SVDiffLinear` (a
subclass) with a parameter ``delta`` next to its frozen ``weight``/``bias``, and non-persistent buffers
``svd_u``, ``svd_s``, ``svd_vh``. Only ``delta`` is in the adapter file; ``U, sigma, V`` are recomputed
from the base weights whenever the method is applied (so an adapter only loads onto the same base).

Targets (``targets=``): ``all`` (default; every ``nn.Linear`` and ``nn.Conv2d`` of the U-Net, as in the
SVDiff paper's U-Net tuning: 222,696 shifts on SD 1.5), ``attention`` (``to_q/k/v/out.0`` of every
attention: 93,696) or ``cross_kv`` (the cross-attention ``to_k``/``to_v`` only: 18,816). Dutt et al.
report 21.4K for SVDiff, which none of these (nor any other natural subset) reproduces.

Merge: each layer becomes a plain ``nn.Linear``/``nn.Conv2d`` holding ``W'`` (exact up to fp32).

Costs: the SVDs are computed when the method is applied (for SD 1.5 about 25 minutes on 2 CPU cores,
so apply it on the GPU: the trainer and the app do); ``U`` and ``V^T`` (fp32) cost more memory than the
targeted weights themselves (4.3 GB for SD 1.5 with ``targets="all"``), and each training forward
rebuilds the shift of every layer (one ``[out, k] x [k, in*kh*kw]`` product). Only exact
``nn.Linear``/``nn.Conv2d`` are targeted. Under bf16/fp16 the shift is computed in fp32 and added to
the (cast) frozen weight.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core import MethodError, freeze
from ..registry import Method, register

TARGETS = ("all", "attention", "cross_kv")


class _SVDiffMixin:
    """Spectral shift of ``self.weight`` (2-D view ``[out, -1]``)."""

    def _init_svdiff(self) -> None:
        w = self.weight.detach()
        w2 = w.reshape(w.shape[0], -1)
        k = min(w2.shape)
        if w.is_meta:  # counting on an empty model: shapes only
            u, s, vh = (torch.empty(w2.shape[0], k, device="meta"), torch.empty(k, device="meta"),
                        torch.empty(k, w2.shape[1], device="meta"))
        else:
            u, s, vh = torch.linalg.svd(w2.float(), full_matrices=False)
        self.register_buffer("svd_u", u, persistent=False)
        self.register_buffer("svd_s", s, persistent=False)
        self.register_buffer("svd_vh", vh, persistent=False)
        self.delta = nn.Parameter(torch.zeros(k, device=w.device, dtype=torch.float32))

    def shift(self) -> torch.Tensor:
        """``U diag(ReLU(sigma + delta) - sigma) V^T`` in the weight's shape and dtype."""
        s = self.svd_s.float()
        d = F.relu(s + self.delta.float()) - s
        corr = (self.svd_u.float() * d) @ self.svd_vh.float()
        return corr.reshape(self.weight.shape).to(self.weight.dtype)

    def svdiff_weight(self) -> torch.Tensor:
        return self.weight + self.shift()

    def _strip(self, cls) -> None:
        del self.delta
        for name in ("svd_u", "svd_s", "svd_vh"):
            delattr(self, name)
        self.__class__ = cls


class SVDiffLinear(_SVDiffMixin, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.svdiff_weight(), self.bias)


class SVDiffConv2d(_SVDiffMixin, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.svdiff_weight(), self.bias)


_SWAP = {nn.Linear: SVDiffLinear, nn.Conv2d: SVDiffConv2d}
_BASE = {SVDiffLinear: nn.Linear, SVDiffConv2d: nn.Conv2d}


def target_names(model: nn.Module, targets: str) -> list[str]:
    if targets not in TARGETS:
        raise MethodError(f"svdiff targets must be one of {', '.join(TARGETS)}, not {targets!r}")
    if targets == "all":
        return [n for n, m in model.named_modules() if type(m) in _SWAP]
    from .unet import attention_projection_names

    names = attention_projection_names(model)
    if targets == "cross_kv":
        names = [n for n in names if n.rsplit(".", 2)[-2] == "attn2" and n.endswith(("to_k", "to_v"))]
    return names


def _apply_svdiff(model: nn.Module, targets: str = "all") -> nn.Module:
    freeze(model)
    names = target_names(model, targets)
    if not names:
        raise MethodError(f"svdiff targets={targets!r} selects no Linear/Conv2d in {type(model).__name__}")
    for name in names:
        module = model.get_submodule(name)
        if type(module) not in _SWAP:
            raise MethodError(f"svdiff: {name} is a {type(module).__name__}, not a plain Linear/Conv2d")
        module.__class__ = _SWAP[type(module)]
        module._init_svdiff()
    return model


@torch.no_grad()
def merge_svdiff(model: nn.Module) -> nn.Module:
    """Write ``W'`` into plain layers; removes ``delta`` and the SVD buffers."""
    for module in list(model.modules()):
        if isinstance(module, _SVDiffMixin):
            module.weight.copy_(module.svdiff_weight())
            module._strip(_BASE[type(module)])
    return model


register(Method(
    name="svdiff", families=("unet",), apply=_apply_svdiff, merge=merge_svdiff, defaults={"targets": "all"},
    summary="spectral shifts of the singular values of every Linear/Conv2d weight",
    paper="Han et al., SVDiff, ICCV 2023", identity_at_init=True, paper_name="svdiff"))
