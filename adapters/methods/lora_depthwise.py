"""LoRA on depthwise convolutions, as a peft custom LoRA layer (``lora`` with ``depthwise=True``).

LoRA (Hu et al., ICLR 2022) factorises a weight update ``dW = B @ A``. A depthwise Conv2d
(``groups == in_channels``; EfficientNet/MobileNet/ConvNeXt ``conv_dw``) has a kernel ``[C_out, 1, k, k]``:
one ``k x k`` filter per channel. Here its update is the rank-``r`` matrix over channels x taps::

    dW = (alpha / r) * (B @ A).view(C_out, 1, k, k)      A: [r, k*k] (kaiming-uniform), B: [C_out, r] (zero)

so the layer is the base layer at init, and merging adds ``dW`` to the kernel (exact). The LoRA paper and
peft define no depthwise variant (peft's conv LoRA needs ``rank % groups == 0`` and cannot merge grouped
convs); this is the plain matrix LoRA applied to the depthwise kernel viewed as a ``C_out x k^2`` matrix.
With ``r >= k*k`` it spans every depthwise kernel update.

peft dispatches it through ``LoraConfig._register_custom_module`` (peft's experimental API for custom
layers) on :class:`DepthwiseMarker` convs, which :func:`mark_depthwise` makes of the targeted layers (a
class swap that keeps the conv's own forward, e.g. timm's ``Conv2dSame``). Tensor names are peft's
(``<conv>.lora_A.default.weight``...). A folder with depthwise LoRA loads with :func:`adapters.io.load_adapter`;
plain ``PeftModel.from_pretrained`` does not know the custom layer.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call

from ..core import MethodError, add_mixin, remove_mixin

class DepthwiseMarker:
    """Mixin marking a depthwise Conv2d that gets :class:`DepthwiseLoRA` (dispatch key for peft)."""


def mark_depthwise(conv: nn.Conv2d) -> None:
    add_mixin(conv, DepthwiseMarker, "Depthwise")


def unmark_all(model: nn.Module) -> nn.Module:
    """Undo :func:`mark_depthwise` on every conv of ``model`` (after merging); returns the model."""
    for m in model.modules():
        remove_mixin(m, DepthwiseMarker)
    return model


def lora_layer_class():
    """:class:`DepthwiseLoRA` (built lazily: it subclasses peft's ``LoraLayer``)."""
    global _LAYER
    if _LAYER is None:
        _LAYER = _build_layer_class()
    return _LAYER


_LAYER = None


def _build_layer_class():
    from peft.tuners.lora.layer import LoraLayer
    from peft.tuners.tuners_utils import check_adapters_to_merge

    class DepthwiseLoRA(nn.Module, LoraLayer):
        """peft LoRA layer for a depthwise Conv2d (see the module docstring)."""

        def __init__(self, base_layer: nn.Module, adapter_name: str, config, r: int = 0, lora_alpha: int = 1,
                     **kwargs) -> None:
            super().__init__()
            LoraLayer.__init__(self, base_layer)
            if config.use_dora:
                raise MethodError("DoRA on depthwise convolutions is not supported; use depthwise=False")
            self._active_adapter = adapter_name
            self.update_layer(adapter_name, r, lora_alpha, config)

        def update_layer(self, adapter_name: str, r: int, lora_alpha: float, config, **kwargs) -> None:
            if r <= 0:
                raise MethodError(f"LoRA rank must be a positive integer, not {r}")
            base = self.get_base_layer()
            taps = math.prod(base.kernel_size)
            p = base.weight
            self.r[adapter_name] = r
            self.lora_alpha[adapter_name] = lora_alpha
            self.scaling[adapter_name] = lora_alpha / r
            self.lora_dropout[adapter_name] = nn.Dropout(config.lora_dropout) if config.lora_dropout else nn.Identity()
            self.lora_A[adapter_name] = nn.Linear(taps, r, bias=False, device=p.device, dtype=p.dtype)
            self.lora_B[adapter_name] = nn.Linear(r, base.out_channels, bias=False, device=p.device, dtype=p.dtype)
            self.lora_bias[adapter_name] = False
            self.use_dora[adapter_name] = False
            self.use_rslora[adapter_name] = False
            with torch.no_grad():
                nn.init.kaiming_uniform_(self.lora_A[adapter_name].weight, a=math.sqrt(5))  # as peft's LoRA
                nn.init.zeros_(self.lora_B[adapter_name].weight)
            self.set_adapter(self.active_adapters)

        def get_delta_weight(self, adapter: str) -> torch.Tensor:
            base = self.get_base_layer()
            delta = self.lora_B[adapter].weight @ self.lora_A[adapter].weight
            return (delta * self.scaling[adapter]).view_as(base.weight)

        def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
            for adapter in check_adapters_to_merge(self, adapter_names):
                if adapter in self.lora_A:
                    weight = self.get_base_layer().weight
                    merged = weight.data + self.get_delta_weight(adapter).to(weight.dtype)
                    if safe_merge and not torch.isfinite(merged).all():
                        raise ValueError(f"NaNs detected in the merged weights of adapter {adapter}")
                    weight.data = merged
                    self.merged_adapters.append(adapter)

        def unmerge(self) -> None:
            while self.merged_adapters:
                adapter = self.merged_adapters.pop()
                if adapter in self.lora_A:
                    weight = self.get_base_layer().weight
                    weight.data -= self.get_delta_weight(adapter).to(weight.dtype)

        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            base = self.get_base_layer()
            if self.disable_adapters:
                if self.merged:
                    self.unmerge()
                return base(x, *args, **kwargs)
            result = base(x, *args, **kwargs)
            if self.merged:
                return result
            for adapter in self.active_adapters:
                if adapter not in self.lora_A:
                    continue
                # the base conv's own forward (padding rules included) with the kernel dW and no bias
                params = {"weight": self.get_delta_weight(adapter)}
                if base.bias is not None:
                    params["bias"] = torch.zeros_like(base.bias)
                result = result + functional_call(base, params, (self.lora_dropout[adapter](x),))
            return result

        def __repr__(self) -> str:
            return "lora.depthwise." + super().__repr__()

    return DepthwiseLoRA
