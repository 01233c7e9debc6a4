"""timm preprocessing built from a model's data config (as saved with an adapter)."""
from __future__ import annotations

from timm.data import create_transform

from .errors import DataError

CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def build_transforms(data_cfg: dict, train: bool = False, **overrides):
    """timm transform for PIL images from a data config such as
    {"input_size": [3, 224, 224], "mean": [...], "std": [...], "interpolation": "bicubic",
     "crop_pct": 0.875, "crop_mode": "center"}.

    train=True gives timm's training augmentation (random resized crop, flip, colour jitter);
    `overrides` are passed to timm.data.create_transform (e.g. scale=(0.5, 1.0), color_jitter=0.0).
    Keys other than CONFIG_KEYS in data_cfg are ignored.
    """
    if "input_size" not in data_cfg:
        raise DataError(f"data config needs 'input_size' (e.g. [3, 224, 224]); found keys {sorted(data_cfg)}.")
    cfg = {k: data_cfg[k] for k in CONFIG_KEYS if k in data_cfg and data_cfg[k] is not None}
    size = cfg["input_size"]
    cfg["input_size"] = tuple(size) if isinstance(size, (list, tuple)) else int(size)
    for k in ("mean", "std"):
        if k in cfg:
            cfg[k] = tuple(float(v) for v in cfg[k])
    cfg.update(overrides)
    return create_transform(**cfg, is_training=bool(train))
