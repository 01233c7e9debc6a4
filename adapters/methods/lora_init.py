"""LoRA's initialisations and rsLoRA, as peft implements them (``LoraConfig.init_lora_weights``,
``use_rslora``), for the ``lora``/``dora`` methods' ``init`` and ``rslora`` hyper-parameters:

=========== ==================================================================================== ==========
``init``    what (paper)                                                                         needs data
=========== ==================================================================================== ==========
default     A kaiming-uniform, B zero (Hu et al. 2022; peft's default)                           no
gaussian    A normal(0, 1/r), B zero                                                             no
pissa       A, B from the top-r singular vectors of W, W keeps the rest (Meng et al., PiSSA 2024) no
olora       A, B from a QR decomposition of W, W keeps the rest (Büyükakyüz, OLoRA 2024)         no
eva         A from the SVD of the layer's input activations, B zero (Paischer et al., EVA 2024)  yes
corda       context-oriented SVD of W times the input covariance (Yang et al., CorDA 2024)      yes
lora_ga     A, B from the SVD of W's estimated gradient (Wang et al., LoRA-GA 2024)              yes
=========== ==================================================================================== ==========

Data-driven inits read batches the trainer gives through :func:`init_batches` (the run's own training
loader); called without them they raise :class:`MethodError`. Every init except ``default``/``gaussian``
works on Linear layers only in peft: on a CNN's convolutions it is refused with a clear error.

Inits that change the base weights (pissa, olora, corda, lora_ga: ``W <- W - s B0 A0``) keep ``B0``/``A0``
as buffers saved with the adapter (``medpeft_B0``/``medpeft_A0``), so loading rebuilds the same residual
weight without the data (:func:`restore_residual`); identity at init holds for all inits.
``rslora=True``: scaling ``alpha / sqrt(r)`` instead of ``alpha / r`` (Kalajdzievski, rsLoRA 2023).
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
from torch import nn

from ..core import MethodError

INITS = ("default", "gaussian", "pissa", "olora", "eva", "corda", "lora_ga")
DATA_INITS = ("eva", "corda", "lora_ga")
BASE_CHANGING = ("pissa", "olora", "corda", "lora_ga")


@contextlib.contextmanager
def init_batches(batches: Iterable, limit: int = 8):
    """Within this block, data-driven LoRA inits read up to ``limit`` ``(images, labels)`` batches of
    ``batches`` (read only when such an init is asked for)."""
    global _SOURCE
    previous, _SOURCE = _SOURCE, (batches, limit)
    try:
        yield
    finally:
        _SOURCE = previous


_SOURCE: tuple | None = None


def _batches() -> list:
    if _SOURCE is None:
        return []
    batches, limit = _SOURCE
    taken = []
    for i, b in enumerate(batches):
        if i >= limit:
            break
        taken.append((b[0], b[1]) if isinstance(b, (tuple, list)) else (b, None))
    return taken


def config_kwargs(init: str, rslora: bool, family: str) -> dict:
    """The ``LoraConfig`` arguments for ``init`` (validated)."""
    if init not in INITS:
        raise MethodError(f"LoRA init must be one of {', '.join(INITS)}; not {init!r}")
    if family != "vit" and init not in ("default", "gaussian"):
        raise MethodError(f"LoRA init {init!r} works on Linear layers only (peft); this {family} backbone's "
                          "convolutions take init default or gaussian")
    if init in DATA_INITS and _SOURCE is None and not _LOADING:
        raise MethodError(f"LoRA init {init!r} is data-driven: it needs training batches (python -m trainer gives "
                          "the run's own; in code: with adapters.methods.lora_init.init_batches(loader): ...)")
    import peft

    kw: dict = {"use_rslora": bool(rslora), "init_lora_weights": True if init == "default" else init}
    if _LOADING and init in BASE_CHANGING + DATA_INITS:
        kw["init_lora_weights"] = True  # the saved A, B (and A0, B0) are loaded instead
    elif init == "eva":
        kw["eva_config"] = peft.EvaConfig()
    elif init == "corda":
        from peft.tuners.lora.config import CordaConfig

        kw["corda_config"] = CordaConfig()
    elif init == "lora_ga":
        kw["lora_ga_config"] = peft.LoraGAConfig()
    return kw


_LOADING = False


@contextlib.contextmanager
def loading():
    """Applying to rebuild a saved adapter: no data needed, the init tensors come from the file."""
    global _LOADING
    previous, _LOADING = _LOADING, True
    try:
        yield
    finally:
        _LOADING = previous


def _loss(logits: torch.Tensor, y) -> torch.Tensor:
    if y is None:
        return logits.float().pow(2).mean()
    if y.dtype.is_floating_point:
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), y.float())
    return nn.functional.cross_entropy(logits.float(), y)


def before_wrap(model: nn.Module, config) -> None:
    """CorDA / LoRA-GA preprocessing (before ``get_peft_model``)."""
    init = config.init_lora_weights
    if init == "corda":
        from peft.tuners.lora.corda import preprocess_corda

        data = _batches()

        def run_model():  # peft's CorDA hooks expect one sample per forward (they squeeze the batch)
            with torch.no_grad():
                for x, _ in data:
                    for i in range(len(x)):
                        model(x[i:i + 1])
        preprocess_corda(model, config, run_model=run_model)
    elif init == "lora_ga":
        from peft import preprocess_loraga

        data = _batches()

        def train_step():
            for x, y in data:
                _loss(model(x), y).backward()
        preprocess_loraga(model, config, train_step=train_step)


def after_wrap(peft_model: nn.Module, config, init: str) -> None:
    """EVA's data pass; then the A0/B0 buffers of base-changing inits."""
    if config.init_lora_weights == "eva":
        from peft import initialize_lora_eva_weights

        initialize_lora_eva_weights(peft_model, dataloader=[x for x, _ in _batches()],
                                    forward_fn=lambda model, x: model(x), prepare_model_inputs_fn=None,
                                    prepare_layer_inputs_fn=None, show_progress_bar=False)
    if init in BASE_CHANGING:
        for layer in _lora_layers(peft_model):
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            layer.register_buffer("medpeft_A0", a.detach().clone() if not _LOADING else torch.zeros_like(a))
            layer.register_buffer("medpeft_B0", b.detach().clone() if not _LOADING else torch.zeros_like(b))


def _lora_layers(model: nn.Module):
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer) and "default" in getattr(m, "lora_A", {})]


def init_buffers(model: nn.Module) -> list[str]:
    """Names of the A0/B0 buffers an adapter file carries (base-changing inits)."""
    return [n for n, _ in model.named_buffers() if n.endswith(("medpeft_A0", "medpeft_B0"))]


@torch.no_grad()
def restore_residual(model: nn.Module) -> None:
    """After loading A0/B0: the base weight becomes ``W - s B0 A0``, as it was during training."""
    for layer in _lora_layers(model):
        if hasattr(layer, "medpeft_A0"):
            base = layer.get_base_layer()
            delta = layer.scaling["default"] * (layer.medpeft_B0 @ layer.medpeft_A0)
            base.weight -= delta.to(base.weight.dtype)
