"""The Train tab's choices and the configuration built from them: backbones offered, the methods
that apply to a backbone (the paper's pick first: SSF for CNNs, LoRA for ViTs), the defaults for the
machine, and the form's values as a validated :class:`TrainConfig` (its ``validate()`` owns the
range checks; the limits here are the web server's own)."""
from __future__ import annotations

import os
from typing import Any

from adapters import OFFLINE_LITE0, methods_for
from adapters.backbones import backbone_family

from ..config import DEFAULT_CNN, DEFAULT_VIT, ConfigError, TrainConfig

MAX_EPOCHS = 1000  # a web server's caps (TrainConfig only asks for at least 1)
MAX_BATCH = 1024
IMG_RANGE = (16, 1024)
TRIALS_RANGE = (2, 20)

TRAIN_BACKBONES = [("EfficientNet-Lite0 · ImageNet · offline weights", OFFLINE_LITE0),
                   ("ViT-B/16, ImageNet-21k (Hub weights)", DEFAULT_VIT),
                   ("ViT-S/16, ImageNet-21k (Hub weights)", "vit_small_patch16_224.augreg_in21k_ft_in1k"),
                   ("DeiT-S (Hub weights)", "deit_small_patch16_224.fb_in1k"),
                   ("ResNet-50 (Hub weights)", DEFAULT_CNN)]


def backbone_choices(reachable: bool | None = None) -> list[tuple[str, str]]:
    """The Train tab's backbones: :data:`TRAIN_BACKBONES`, plus the foundation presets with a Hub repo
    where the Hub is reachable (gated ones need HF_TOKEN and their licence accepted)."""
    from adapters.foundation import PRESETS

    from ..preflight import hub_reachable

    if not (hub_reachable() if reachable is None else reachable):
        return list(TRAIN_BACKBONES)
    presets = [(f"{p.name} · {p.modality} · {p.license}" + (" · gated: needs HF_TOKEN" if p.gated else ""), p.name)
               for p in PRESETS.values() if p.hub_id and p.source != "timm" or p.name in _VIT_TIMM_PRESETS]
    return list(TRAIN_BACKBONES) + presets


_VIT_TIMM_PRESETS = ("uni", "uni2-h", "virchow2", "h-optimus-0", "prov-gigapath")  # timm VisionTransformers


def recommended_method(family: str) -> str:
    """Dutt et al. 2024: SSF for CNNs, LoRA for ViTs."""
    return "lora" if family == "vit" else "ssf"


def method_names(family: str) -> list[str]:
    """The methods for a backbone family, the recommended one first."""
    best = recommended_method(family)
    return [best] + sorted(m.name for m in methods_for(family) if m.name != best)


def default_choice(has_gpu: bool | None = None) -> tuple[str, str]:
    """(backbone, method) as the paper recommends: SSF for CNNs, LoRA for ViTs; a ViT only on a GPU."""
    import torch

    gpu = torch.cuda.is_available() if has_gpu is None else has_gpu
    return (DEFAULT_VIT, "lora") if gpu else (OFFLINE_LITE0, "ssf")


def whole_number(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number") from None
    if v != float(value) or (lo is not None and v < lo) or (hi is not None and v > hi):
        bounds = f" from {lo if lo is not None else 1} to {hi}" if hi is not None else ""
        raise ConfigError(f"{name} must be a whole number{bounds}, not {value}")
    return v


def hpo_trials(quick_hpo: bool, trials: Any) -> int:
    """The number of quick-HPO trials asked for (0: no HPO)."""
    return whole_number("HPO trials", trials, *TRIALS_RANGE) if quick_hpo else 0


def form_config(*, backbone: str | None, method: str | None, epochs: Any, batch_size: Any, lr: Any, img_size: Any,
                default_backbone: str = OFFLINE_LITE0, has_gpu: bool = False) -> TrainConfig:
    """The Train tab's form as a validated TrainConfig; the dataset and folders are set later
    (``dataclasses.replace`` and ``validate()`` again). Raises ConfigError with a plain message."""
    epochs = whole_number("epochs", epochs, hi=MAX_EPOCHS)
    batch_size = whole_number("batch size", batch_size, hi=MAX_BATCH)
    img_size = whole_number("image size", img_size, *IMG_RANGE)
    try:
        lr = float(lr)
    except (TypeError, ValueError):
        raise ConfigError("the learning rate must be a number such as 0.005") from None
    if not lr < 1:
        raise ConfigError(f"the learning rate must be between 0 and 1, not {lr}")
    backbone = (backbone or "").strip() or default_backbone
    family = backbone_family(backbone)
    method = (method or "").strip() or recommended_method(family)
    if method not in method_names(family):
        raise ConfigError(f"{method!r} is not a PEFT method for {family.upper()} backbones like {backbone}; "
                          f"choose one of {', '.join(method_names(family))}")
    from adapters.foundation import find_preset

    if "/" not in backbone and ":" not in backbone and find_preset(backbone) is None:
        import timm

        if not timm.is_model(backbone):
            raise ConfigError(f"unknown backbone {backbone!r}: use a foundation preset (python -m adapters backbones) "
                              f"or a timm model name (timm.list_models())")
    return TrainConfig(method=method, backbone=backbone, pretrained=True, img_size=img_size, epochs=epochs,
                       batch_size=batch_size, lr=lr, seeds=[0],
                       num_workers=min(4, os.cpu_count() or 1) if has_gpu else 0,
                       mixed_precision="bf16" if has_gpu else "no").validate()
