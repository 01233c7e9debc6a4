"""Tiny real or learnable image folders for trainer tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(folder: Path, per_class: int, size: int = 48) -> Path:
    """scikit-learn's real handwritten digits (8x8, 16 grey levels) as an image folder of PNGs."""
    from sklearn.datasets import load_digits

    d = load_digits()
    counts: dict[int, int] = {}
    for img, label in zip(d.images, d.target):
        if counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        arr = (img * 255 / 16).astype(np.uint8)
        out = folder / f"digit_{label}" / f"{counts[label]:03d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr, mode="L").resize((size, size), Image.BILINEAR).save(out)
    return folder


def write_shapes(folder: Path, per_class: int = 12, size: int = 40) -> Path:
    """A tiny learnable 3-class image folder (bright square position) for mechanics tests."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(["left", "middle", "right"]):
        for i in range(per_class):
            arr = (rng.random((size, size, 3)) * 60).astype(np.uint8)
            x0 = 2 + c * (size // 3)
            arr[size // 3: 2 * size // 3, x0: x0 + size // 4] = 230
            out = folder / name / f"{i:03d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(out)
    return folder
