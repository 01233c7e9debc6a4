"""Grad-CAM heat maps for timm classifiers (CNNs and ViTs), as used by the app.

- CNN: Grad-CAM (Selvaraju et al., ICCV 2017) on the last convolutional stage, i.e. the output of
  ``forward_features`` (the feature map the classifier head pools).
- ViT: Grad-CAM on the output of the last block's ``norm1`` (the tokens its attention reads),
  patch tokens reshaped to the patch grid. The class token alone reaches the head, so the final
  features would give patch tokens no gradient; one block earlier they do.

Both return a map in [0, 1] over the model's input grid; :func:`overlay` draws it on the image.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from adapters import family_of, unwrap


class GradCamError(RuntimeError):
    pass


def _normalise(cam: torch.Tensor) -> np.ndarray:
    cam = torch.relu(cam).float()
    hi = float(cam.max())
    if hi <= 0:
        return np.zeros(tuple(cam.shape), dtype=np.float32)
    return (cam / hi).cpu().numpy().astype(np.float32)


def _cnn_cam(model: nn.Module, x: torch.Tensor, class_idx: int) -> np.ndarray:
    m = unwrap(model)
    with torch.no_grad():
        feats = m.forward_features(x)
    if feats.ndim != 4:
        raise GradCamError(f"expected a 4-D feature map from {type(m).__name__}.forward_features, got {feats.ndim}-D")
    feats = feats.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = m.forward_head(feats)
        logits[0, class_idx].backward()
    weights = feats.grad.mean(dim=(2, 3), keepdim=True)  # [1, C, 1, 1]
    cam = (weights * feats.detach()).sum(dim=1)[0]  # [H, W]
    return _normalise(cam)


def _last_norm1(m: nn.Module) -> nn.Module:
    last = m.blocks[-1]
    for name, mod in last.named_modules():
        if name.split(".")[-1] == "norm1":
            return mod
    raise GradCamError(f"{type(m).__name__}: no norm1 in the last transformer block")


def _vit_cam(model: nn.Module, x: torch.Tensor, class_idx: int) -> np.ndarray:
    m = unwrap(model)
    gh, gw = (int(v) for v in m.patch_embed.grid_size)
    captured: dict[str, torch.Tensor] = {}

    def hook(_mod, _inp, out):
        out = out.detach().requires_grad_(True)
        captured["act"] = out
        return out

    handle = _last_norm1(m).register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(x)
            logits[0, class_idx].backward()
    finally:
        handle.remove()
    act = captured["act"]
    if act.grad is None:
        raise GradCamError("no gradient reached the last block (is the model frozen in an unusual way?)")
    n = gh * gw
    a, g = act.detach()[0, -n:], act.grad[0, -n:]  # patch tokens are the last grid_h * grid_w tokens
    cam = (a * g.mean(dim=0, keepdim=True)).sum(dim=-1).reshape(gh, gw)
    return _normalise(cam)


def grad_cam(model: nn.Module, x: torch.Tensor, class_idx: int) -> np.ndarray:
    """Heat map in [0, 1] (model grid resolution) for ``class_idx`` on the single-image batch ``x``."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise GradCamError("grad_cam takes one image: a [1, C, H, W] tensor")
    family = family_of(model)
    if family == "vit":
        return _vit_cam(model, x, class_idx)
    if family == "cnn":
        return _cnn_cam(model, x, class_idx)
    raise GradCamError(f"Grad-CAM is not available for {family} models")


def overlay(image: Image.Image, cam: np.ndarray, alpha: float = 0.45, colormap: str = "jet") -> Image.Image:
    """The heat map (upsampled bilinearly) blended over ``image`` (RGB)."""
    from matplotlib import colormaps

    image = image.convert("RGB")
    heat = Image.fromarray(np.uint8(np.clip(cam, 0, 1) * 255)).resize(image.size, Image.BILINEAR)
    rgb = colormaps[colormap](np.asarray(heat, dtype=np.float32) / 255.0)[..., :3]
    heat_rgb = Image.fromarray(np.uint8(rgb * 255))
    return Image.blend(image, heat_rgb, alpha)
