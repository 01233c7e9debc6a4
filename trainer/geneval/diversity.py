"""Diversity of generated images by MS-SSIM (Wang et al. 2003; torchmetrics), as RoentGen reports it:
the mean MS-SSIM between images generated from the *same* prompt (intra-prompt), and, when no prompt
repeats, between random pairs of the whole set (set-level). Lower is more diverse; the same score on
the real set is given as a reference. Images are compared grey at 192 x 192 (MS-SSIM's five scales need
more than 160 px), data range 1.
"""
from __future__ import annotations

import itertools
import random
from collections import defaultdict
from typing import Sequence

import torch


def ms_ssim_pairs(thumbs: torch.Tensor, pairs: Sequence[tuple[int, int]], batch: int = 32) -> list[float]:
    """MS-SSIM of each pair ``(i, j)`` of the uint8 ``[N, H, W]`` grey images."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim

    values: list[float] = []
    for k in range(0, len(pairs), batch):
        chunk = pairs[k:k + batch]
        a = thumbs[[i for i, _ in chunk]].float()[:, None] / 255.0
        b = thumbs[[j for _, j in chunk]].float()[:, None] / 255.0
        v = ms_ssim(a, b, data_range=1.0, reduction="none")
        values += [float(x) for x in v.reshape(-1)]
    return values


def _random_pairs(n: int, max_pairs: int, seed: int) -> list[tuple[int, int]]:
    every = n * (n - 1) // 2
    if every <= max_pairs:
        return list(itertools.combinations(range(n), 2))
    rng, seen = random.Random(seed), set()
    while len(seen) < max_pairs:
        i, j = rng.sample(range(n), 2)
        seen.add((min(i, j), max(i, j)))
    return sorted(seen)


def set_level(thumbs: torch.Tensor, max_pairs: int = 60, seed: int = 0) -> float | None:
    """Mean MS-SSIM over (up to ``max_pairs``) random pairs of the set; None below 2 images."""
    if thumbs is None or len(thumbs) < 2:
        return None
    values = ms_ssim_pairs(thumbs, _random_pairs(len(thumbs), max_pairs, seed))
    return float(sum(values) / len(values))


def intra_prompt(thumbs: torch.Tensor, prompts: Sequence[str], per_prompt: int = 10) -> tuple[float, int] | None:
    """Mean over repeated prompts of the mean pairwise MS-SSIM of their images (at most ``per_prompt``
    images each), and how many prompts repeat; None when no prompt repeats."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        groups[p].append(i)
    repeated = [idx[:per_prompt] for idx in groups.values() if len(idx) > 1]
    if not repeated:
        return None
    means = []
    for idx in repeated:
        values = ms_ssim_pairs(thumbs, list(itertools.combinations(idx, 2)))
        means.append(sum(values) / len(values))
    return float(sum(means) / len(means)), len(repeated)


def diversity(fake_thumbs: torch.Tensor, prompts: Sequence[str] | None = None,
              real_thumbs: torch.Tensor | None = None, seed: int = 0) -> dict:
    """``{"ms_ssim": value, "kind": "intra_prompt" | "set", ...}``, plus the real set's set-level MS-SSIM."""
    out: dict = {}
    intra = intra_prompt(fake_thumbs, prompts) if prompts is not None else None
    if intra is not None:
        out.update(ms_ssim=intra[0], kind="intra_prompt", n_prompts=intra[1])
    else:
        out.update(ms_ssim=set_level(fake_thumbs, seed=seed), kind="set")
    out["fake_set_ms_ssim"] = out["ms_ssim"] if out["kind"] == "set" else set_level(fake_thumbs, seed=seed)
    out["real_set_ms_ssim"] = set_level(real_thumbs, seed=seed) if real_thumbs is not None else None
    return out
