"""Precision, recall, density and coverage (Naeem et al., ICML 2020, "Reliable Fidelity and Diversity
Metrics for Generative Models"; precision/recall after Kynkaanniemi et al. 2019), k = 5, Euclidean
distances between feature vectors, as CheXGenBench reports them.

Each real sample ``X_i`` gets the radius ``r_i``: its distance to its k-th nearest *other* real sample;
each fake ``Y_j`` its radius ``s_j`` among the fakes. With ``B(c, r)`` the open ball:

- precision = mean over fakes of ``[Y_j in some B(X_i, r_i)]``
- recall    = mean over reals of ``[X_i in some B(Y_j, s_j)]``
- density   = mean over fakes of ``(1/k) #{i : Y_j in B(X_i, r_i)}``
- coverage  = mean over reals of ``[the nearest fake to X_i lies in B(X_i, r_i)]``

Equal to the reference ``prdc`` package (tested); distances in float64, in row blocks so that 10^4 x
10^4 sets fit in memory.
"""
from __future__ import annotations

import torch


def _kth_radii(x: torch.Tensor, k: int, block: int = 2048) -> torch.Tensor:
    """Distance of each row to its k-th nearest other row."""
    radii = []
    for i in range(0, len(x), block):
        d = torch.cdist(x[i:i + block], x)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # the 1st is the row itself (0)
    return torch.cat(radii)


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 5, block: int = 2048) -> dict[str, float]:
    """Precision, recall, density, coverage of ``fake`` against ``real`` (feature matrices ``[n, d]``)."""
    x, y = real.double(), fake.double()
    if len(x) <= k or len(y) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} real and {k} generated images, "
                         f"got {len(x)} and {len(y)}")
    r, s = _kth_radii(x, k, block), _kth_radii(y, k, block)
    in_real_balls = torch.zeros(len(y), dtype=torch.float64)  # per fake: how many real balls hold it
    recalled = torch.zeros(len(x), dtype=torch.bool)
    covered = torch.zeros(len(x), dtype=torch.bool)
    for i in range(0, len(x), block):
        d = torch.cdist(x[i:i + block], y)  # [real block, fakes]
        in_real_balls += (d < r[i:i + block, None]).sum(0)
        recalled[i:i + block] = (d < s[None, :]).any(1)
        covered[i:i + block] = d.min(1).values < r[i:i + block]
    return {"precision": float((in_real_balls > 0).double().mean()), "recall": float(recalled.double().mean()),
            "density": float(in_real_balls.mean() / k), "coverage": float(covered.double().mean()), "k": k}
