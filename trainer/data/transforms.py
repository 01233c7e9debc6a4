"""Preprocessing: the resize the decoded-image cache applies, and timm transforms built from a
model's data config (as saved with an adapter).

Training and inference run the same two steps:

1. ``pre_resize``: the whole image, resized (bicubic) so its shorter side is ``cache_size_for(cfg)``,
   aspect kept, nothing cut off. This is what the image cache stores; the adapter's data config
   records it under ``"pre_resize"`` (``{"mode": "shorter_side", "size": S, "interpolation": "bicubic"}``)
   so the predictor repeats it.
2. the timm transform (``build_transforms``): for evaluation timm's own eval transform, a resize of
   the shorter side to ``floor(input / crop_pct)`` (= S, so a no-op on cached images) and a centre
   crop of ``input`` pixels; for training, timm's random-resized crop taken from the whole image.

Adapters saved before "pre_resize" existed were trained on centre-cropped squares (the cache cut
every image to a square of ``ceil(input / crop_pct)`` pixels); ``pre_resize`` reproduces that for them.
"""
from __future__ import annotations

import math

from PIL import Image
from timm.data import create_transform

from .errors import DataError

CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
PRE_RESIZE = "pre_resize"
SHORTER_SIDE = "shorter_side"
LEGACY_SQUARE = "center_square"


def cache_size_for(data_cfg: dict) -> int:
    """Shorter side of cached images: timm's eval resize, floor(input / crop_pct) (crop_pct <= 1)."""
    size = max(int(v) for v in data_cfg["input_size"][-2:])
    return int(math.floor(size / min(1.0, data_cfg.get("crop_pct", 1.0) or 1.0)))


def pre_resize_config(data_cfg: dict) -> dict:
    """The ``"pre_resize"`` entry a data config records for the cache's resize."""
    return {"mode": SHORTER_SIDE, "size": cache_size_for(data_cfg), "interpolation": "bicubic"}


def resize_shorter_side(img: Image.Image, size: int) -> Image.Image:
    """Resize (bicubic) so the shorter side is `size`, keeping the aspect ratio and the whole image.

    The longer side is int(size * long / short), as torchvision's Resize(size) computes it, so the
    result equals timm's eval resize of the original (which then leaves the cached image as is)."""
    w, h = img.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if new == (w, h):
        return img
    return img.resize(new, Image.Resampling.BICUBIC)


def center_square(img: Image.Image, size: int) -> Image.Image:
    """The cache's former resize: shorter side to `size`, then a centre crop to size x size."""
    img = resize_shorter_side(img, size)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def pre_resize(img: Image.Image, data_cfg: dict) -> Image.Image:
    """Apply the resize recorded in `data_cfg` (see the module docstring) to a PIL RGB image."""
    spec = data_cfg.get(PRE_RESIZE)
    if spec is None:  # saved before the cache kept whole images
        size = data_cfg["input_size"][-1] / min(1.0, data_cfg.get("crop_pct", 1.0) or 1.0)
        return center_square(img, int(math.ceil(size)))
    mode = spec.get("mode") if isinstance(spec, dict) else None
    if mode == SHORTER_SIDE:
        return resize_shorter_side(img, int(spec["size"]))
    if mode == LEGACY_SQUARE:
        return center_square(img, int(spec["size"]))
    raise DataError(f"data config: unknown pre_resize {spec!r}; expected mode {SHORTER_SIDE!r} or {LEGACY_SQUARE!r}.")


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


def transforms_for(config) -> "Callable[[Image.Image], torch.Tensor]":
    """The exact evaluation preprocessing of an adapter (an ``adapters.io.AdapterConfig`` or its data
    config dict): the image-cache resize recorded under ``pre_resize``, then timm's eval transform.
    Together with :func:`trainer.data.load_image` (PNG/JPEG/DICOM to RGB, as in training) it reproduces
    the run's recorded test metrics::

        model, config = load_adapter(folder)
        preprocess = transforms_for(config)
        x = preprocess(load_image("image.dcm")).unsqueeze(0)
    """
    data_cfg = config if isinstance(config, dict) else getattr(config, "data_config", None)
    if not data_cfg:
        raise DataError("this adapter records no data config: its preprocessing is unknown")
    transform = build_transforms(data_cfg, train=False)

    def preprocess(img: Image.Image):
        return transform(pre_resize(img.convert("RGB"), data_cfg))

    return preprocess
