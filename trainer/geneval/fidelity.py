"""Fidelity of a generated set to a real one, from features: FID and KID, each with a bootstrap interval.

FID (Heusel et al. 2017): ``|mu_r - mu_f|^2 + Tr(S_r + S_f - 2 (S_r S_f)^1/2)`` in float64, computed as
:mod:`trainer.loops.fid` computes it (torchmetrics' formula; for sets no larger than the feature
dimension the trace term is the nuclear norm of ``A_r A_f^T / sqrt((n_r-1)(n_f-1))``, exact and fast).

KID (Binkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial kernel
``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets: torchmetrics' ``KernelInceptionDistance``
(its ``feature`` is any module: here the identity on precomputed features), ``subset_size`` =
min(1000, n_r, n_f), 100 subsets, seeded.

Bootstrap intervals: both sets resampled with replacement ``n_boot`` times (seeded); the 2.5 and 97.5
percentiles. They show sampling noise at this sample size, not the bias of FID at small N: FID from
fewer than 2,048 images per side is biased upwards (a warning says so).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..loops.fid import small_sample_warning  # noqa: F401  (re-exported: the < 2,048 images warning)


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two feature matrices ``[n, d]`` (float64 arithmetic)."""
    a, b = real.double(), fake.double()
    n_r, n_f, d = a.shape[0], b.shape[0], a.shape[1]
    if n_r < 2 or n_f < 2:
        raise ValueError(f"FID needs at least 2 real and 2 generated images, got {n_r} and {n_f}")
    mu_r, mu_f = a.mean(0), b.mean(0)
    a, b = a - mu_r, b - mu_f
    trace = a.square().sum() / (n_r - 1) + b.square().sum() / (n_f - 1)
    if max(n_r, n_f) <= d:
        cross = torch.linalg.svdvals(a @ b.t()).sum() / ((n_r - 1) * (n_f - 1)) ** 0.5
    else:  # Tr((S_r S_f)^1/2) = sum of sqrt(eig(S_r^1/2 S_f S_r^1/2))
        s_r, s_f = a.t() @ a / (n_r - 1), b.t() @ b / (n_f - 1)
        w, v = torch.linalg.eigh(s_r)
        root = (v * w.clamp_min(0).sqrt()) @ v.t()
        cross = torch.linalg.eigvalsh(root @ s_f @ root).clamp_min(0).sqrt().sum()
    return float((mu_r - mu_f).square().sum() + trace - 2 * cross)


def mmd2_poly(real: torch.Tensor, fake: torch.Tensor, degree: int = 3, coef: float = 1.0) -> float:
    """The unbiased MMD^2 with the polynomial kernel ``(x.y / d + coef)^degree`` on whole sets."""
    x, y = real.double(), fake.double()
    d, m, n = x.shape[1], x.shape[0], y.shape[0]
    kxx = (x @ x.t() / d + coef) ** degree
    kyy = (y @ y.t() / d + coef) ** degree
    kxy = (x @ y.t() / d + coef) ** degree
    return float((kxx.sum() - kxx.diag().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diag().sum()) / (n * (n - 1))
                 - 2 * kxy.mean())


class _Identity(nn.Module):  # torchmetrics' KID takes a feature module; features are precomputed here
    def forward(self, x):
        return x


def kid(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """KID mean and standard deviation over ``subsets`` random subsets (torchmetrics' implementation)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = int(min(subset_size, len(real), len(fake)))
    if size < 2:
        raise ValueError(f"KID needs at least 2 real and 2 generated images, got {len(real)} and {len(fake)}")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "will save all extracted features": they are small here
        metric = KernelInceptionDistance(feature=_Identity(), subsets=subsets, subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def bootstrap(fn, real: torch.Tensor, fake: torch.Tensor, n_boot: int = 50, seed: int = 0,
              level: float = 0.95) -> list[float] | None:
    """Percentile interval of ``fn(real*, fake*)`` over ``n_boot`` resamples of both sets (None if 0)."""
    if n_boot <= 0:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        i = torch.from_numpy(rng.integers(0, len(real), len(real)))
        j = torch.from_numpy(rng.integers(0, len(fake), len(fake)))
        values.append(fn(real[i], fake[j]))
    lo, hi = np.percentile(values, [50 * (1 - level), 100 - 50 * (1 - level)])
    return [float(lo), float(hi)]


def fidelity(real: torch.Tensor, fake: torch.Tensor, n_boot: int = 50, seed: int = 0) -> dict:
    """FID and KID with bootstrap intervals, and the sample sizes and small-sample warning."""
    fid = frechet_distance(real, fake)
    kid_mean, kid_std = kid(real, fake, seed=seed)
    size = int(min(1000, len(real), len(fake)))

    def kid_of(a, b):  # one subset draw per resample keeps the bootstrap cheap
        k = min(size, len(a), len(b))
        return mmd2_poly(a[:k], b[:k])

    return {"fid": fid, "fid_ci95": bootstrap(frechet_distance, real, fake, n_boot, seed),
            "kid": kid_mean, "kid_std": kid_std, "kid_ci95": bootstrap(kid_of, real, fake, n_boot, seed + 1),
            "n_real": len(real), "n_fake": len(fake), "warning": small_sample_warning(len(real), len(fake))}
