"""Memorization of training images: each generated image's nearest training image, in pixel space and in
feature space, and a flag calibrated on held-out real images.

Why not a fixed threshold. CheXGenBench reports the pixel and RAD-DINO distances to the training image of
the same prompt without a threshold; MemControl (after Carlini et al. 2023) flags tile-L2 below a fixed 20.
A fixed distance means nothing across datasets: two different chest radiographs are closer to each other
than two different photographs. Here the threshold comes from the data, and its false-positive rate is
stated.

The score of an image ``q`` (generated, or held-out real) against the training set, per channel:

- **pixel:** grey, 64 px, Gaussian-blurred (sigma 1 px: noise), the central 75 % window sampled on a
  24 x 24 grid and standardised (mean 0, norm 1: brightness and contrast). ``q`` is resampled under 343
  alignments (zoom 0.9-1.3, also per axis: crops and aspect changes; offsets up to 12 % of the width:
  shifts), then the 11 best-matching training images get two rounds of local refinement (steps 4 % and
  2 %); the best normalised cross-correlation is kept and distance = 1 - NCC. Like SSCD's copy-detection
  descriptor, it is invariant to the edits that make a "near-copy" (a Carlini-style tile-L2 is not).
- **feature:** cosine distance of the extractor's features, centred on the training mean.

Each channel's nearest distance ``d_1`` is divided by the mean distance of the next k = 10 neighbours
(Carlini et al.'s relative distance): a copy has one training image much closer than the rest, a novel
image of the same kind (every chest radiograph resembles every other) has many at similar distances.

Calibration: the held-out real images (the ``--real`` set, never trained on; exact duplicates of training
images are dropped from it) are scored the same way. Each channel's threshold on the log relative
distance is its lower ``fpr / channels`` quantile over them (a union bound: the channels' false-positive
rates add up to at most ``fpr``, default 1 %): the empirical quantile, or, lower, its extrapolation from
an exponential tail fitted to the lowest 20 % (a few held-out images cannot show a 1 % quantile). An
image is flagged when any channel falls below its threshold; its score is the lowest channel margin in
held-out spreads (< 0 = flagged). Stated with it: the target rate, the held-out images' own flag rate,
a leave-one-out estimate of the false-positive rate, and 1/(n+1), the smallest rate n held-out images
can show.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GRID = 24
WINDOW = 0.75
NEIGHBOURS = 10
ZOOMS = [(1.0, 1.0), (0.9, 0.9), (1.1, 1.1), (1.2, 1.2), (1.3, 1.3), (1.0, 1.15), (1.15, 1.0)]
OFFSETS = [-0.24, -0.16, -0.08, 0.0, 0.08, 0.16, 0.24]


def _blur(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    r = 2
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).to(x.dtype)
    x = x[:, None]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return x


def _standardise(v: torch.Tensor) -> torch.Tensor:
    v = v - v.mean(-1, keepdim=True)
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def _window() -> torch.Tensor:
    t = torch.linspace(-WINDOW, WINDOW, GRID)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([xx, yy], -1)  # [G, G, 2] (x, y) as grid_sample wants


def _variant_params() -> torch.Tensor:
    """``[V, 4]`` (zoom x, zoom y, offset x, offset y) of the coarse alignment search."""
    return torch.tensor([(cx, cy, ox, oy) for cx, cy in ZOOMS for ox in OFFSETS for oy in OFFSETS])


def _grids(params: torch.Tensor) -> torch.Tensor:
    """Sampling grids ``[..., G, G, 2]`` for alignments ``[..., 4]``: training-window point t -> query
    point (t - offset) * zoom."""
    return (_window() - params[..., None, None, 2:]) * params[..., None, None, :2]


def train_descriptors(small: torch.Tensor) -> torch.Tensor:
    """Training images (grey ``[N, 64, 64]``) -> standardised window descriptors ``[N, G*G]``."""
    x = _blur(small.float())
    grid = _window()[None].expand(len(x), -1, -1, -1)
    return _standardise(F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).flatten(1))


def _sample(q: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Descriptors ``[b, P, G*G]`` of the blurred queries ``q`` [b, 1, 64, 64] under alignments ``params``
    [b, P, 4] (every alignment of a query stacked into one sampling grid: no copies of the image)."""
    b, p = params.shape[:2]
    grid = _grids(params).reshape(b, p * GRID, GRID, 2)
    out = F.grid_sample(q, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return _standardise(out.view(b, p, GRID * GRID))


def _refine(q, cand, params, train_desc, best, step: float):
    """One local search round around each (query, candidate) alignment: zooms x (1 +- step), offsets +- step."""
    d = torch.tensor([-step, 0.0, step])
    local = torch.cartesian_prod(d, d, d, d)  # [81, 4]
    b, k = cand.shape
    trial = torch.cat([params[:, :, None, :2] * (1 + local[:, :2]), params[:, :, None, 2:] + local[:, 2:]], -1)
    n = local.shape[0]
    desc = _sample(q, trial.reshape(b, k * n, 4)).view(b, k, n, -1)
    sims = torch.einsum("bknd,bkd->bkn", desc, train_desc[cand])
    value, idx = sims.max(-1)
    chosen = trial.gather(2, idx[..., None, None].expand(-1, -1, 1, 4))[:, :, 0]
    better = value > best
    return torch.where(better, value, best), torch.where(better[..., None], chosen, params)


def pixel_similarity(query: torch.Tensor, train_desc: torch.Tensor, batch: int = 16, block: int = 4096,
                     refine: int = NEIGHBOURS + 1) -> torch.Tensor:
    """Best NCC over the alignments of each query (grey ``[Q, 64, 64]``) with each training descriptor:
    ``[Q, N]``. A coarse search over every pair; then the ``refine`` most similar training images of each
    query get two rounds of local search (steps 4 % and 2 %)."""
    coarse = _variant_params()
    v = len(coarse)
    out = torch.empty(len(query), len(train_desc))
    x = _blur(query.float())
    from tqdm.auto import tqdm

    for i in tqdm(range(0, len(x), batch), desc="nearest training images", unit="batch", dynamic_ncols=True,
                  disable=len(x) * len(train_desc) < 200_000):
        q = x[i:i + batch]
        b = len(q)
        desc = _sample(q, coarse[None].expand(b, -1, -1)).reshape(b * v, -1)
        arg = torch.empty(b, len(train_desc), dtype=torch.long)
        for j in range(0, len(train_desc), block):
            sims = (desc @ train_desc[j:j + block].t()).view(b, v, -1)
            out[i:i + b, j:j + block], arg[:, j:j + block] = sims.max(1)
        k = min(refine, len(train_desc))
        if k:
            best, cand = out[i:i + b].topk(k, dim=1)
            params = coarse[arg.gather(1, cand)]  # [b, k, 4]
            for step in (0.04, 0.02):
                best, params = _refine(q, cand, params, train_desc, best, step)
            out[i:i + b].scatter_(1, cand, best)
    return out


def feature_distance(query: torch.Tensor, train: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Cosine distances ``[Q, N]`` of features centred on ``centre`` (the training mean)."""
    a = F.normalize(query.double() - centre, dim=1)
    b = F.normalize(train.double() - centre, dim=1)
    return (1 - a @ b.t()).float()


def relative(dist: torch.Tensor, k: int = NEIGHBOURS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest index, nearest distance, and log(d_1 / mean of the next k distances) per row."""
    k = max(1, min(k, dist.shape[1] - 1))
    vals, idx = dist.clamp_min(1e-6).topk(min(k + 1, dist.shape[1]), dim=1, largest=False)
    if dist.shape[1] == 1:
        return idx[:, 0], vals[:, 0], vals[:, 0].log()
    return idx[:, 0], vals[:, 0], (vals[:, 0] / vals[:, 1:].mean(1)).log()


def _robust(x: torch.Tensor) -> tuple[float, float]:
    med = float(x.median())
    mad = float((x - med).abs().median()) * 1.4826
    return med, max(mad, 1e-6)


def tail_quantile(null: torch.Tensor, fpr: float, tail: float = 0.2) -> float:
    """The lower ``fpr`` quantile of ``null`` extrapolated from an exponential tail (peaks over threshold)
    fitted to its lowest ``tail`` fraction (at least 5 scores): ``u - beta ln(p_u / fpr)``, with ``u`` the
    tail's boundary and ``beta`` the mean excess below it."""
    x = null.double().sort().values
    m = max(5, int(round(tail * len(x))))
    if len(x) <= m:
        return float(x[0])
    u, below = float(x[m]), x[:m]
    beta = float((u - below).mean())
    p_u = m / len(x)
    return u - beta * math.log(p_u / fpr) if fpr < p_u else float(torch.quantile(x, fpr))


def threshold(null: torch.Tensor, fpr: float) -> float:
    """The lower ``fpr`` quantile of the held-out scores: the empirical one (``lower``: their minimum
    when n * fpr < 1), or its exponential-tail extrapolation when that is lower (a few held-out images
    cannot show a 1 % quantile)."""
    if len(null) == 0:
        raise ValueError("no held-out real images to calibrate the memorization threshold on")
    empirical = float(torch.quantile(null.double(), fpr, interpolation="lower"))
    return min(empirical, tail_quantile(null, fpr))


class Detector:
    """Fitted on the training set (grey 64 px images, optional features) and calibrated on held-out reals."""

    def __init__(self, train_small: torch.Tensor, train_features: torch.Tensor | None = None):
        self.train_desc = train_descriptors(train_small)
        self.train_features = train_features
        self.centre = train_features.double().mean(0) if train_features is not None else None
        self.stats: dict[str, tuple[float, float]] = {}
        self.tau: dict[str, float] = {}

    def channels(self, small: torch.Tensor, features: torch.Tensor | None = None) -> dict[str, tuple]:
        """Per channel: (nearest index, nearest distance, log relative distance)."""
        out = {"pixel": relative(1 - pixel_similarity(small, self.train_desc))}
        if self.train_features is not None and features is not None:
            out["feature"] = relative(feature_distance(features, self.train_features, self.centre))
        return out

    def margins(self, channels: dict[str, tuple]) -> torch.Tensor:
        """``[channels, Q]``: (log relative distance - the channel's threshold) / its held-out spread
        (1.4826 MAD); negative = below the threshold."""
        return torch.stack([(c[2] - self.tau[name]) / self.stats[name][1] for name, c in channels.items()])

    def calibrate(self, small: torch.Tensor, features: torch.Tensor | None = None, fpr: float = 0.01) -> dict:
        """Each channel's threshold at ``fpr / channels`` on the held-out images (a union of the channels'
        flags: the false-positive rates add up to at most ``fpr``)."""
        ch = self.channels(small, features)
        self.fpr, per = float(fpr), float(fpr) / len(ch)
        self.stats = {name: _robust(c[2]) for name, c in ch.items()}
        self.tau = {name: threshold(c[2], per) for name, c in ch.items()}
        null = {name: c[2] for name, c in ch.items()}
        n = len(small)
        flagged = torch.zeros(n, dtype=torch.bool)
        loo = torch.zeros(n, dtype=torch.bool)
        for name, x in null.items():
            flagged |= x < self.tau[name]
            if n > 2:
                loo |= torch.tensor([float(x[i]) < threshold(torch.cat([x[:i], x[i + 1:]]), per) for i in range(n)])
        return {"thresholds": {name: float(math.exp(t)) for name, t in self.tau.items()}, "fpr_target": self.fpr,
                "n_heldout": n, "fpr_resolvable": 1.0 / (n + 1),
                "heldout_flag_rate": float(flagged.double().mean()),
                "fpr_leave_one_out": float(loo.double().mean()) if n > 2 else None, "channels": list(ch)}

    def detect(self, small: torch.Tensor, features: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Per image: the score (lowest channel margin: < 0 = flagged) and the channels."""
        ch = self.channels(small, features)
        return self.margins(ch).amin(0), ch


def memorization(train, heldout, fake, feature: str | None = None, fpr: float = 0.01) -> dict:
    """The memorization report of ``fake`` against ``train``, calibrated on ``heldout`` (ImageSets)."""
    dup = set(train.digests)
    keep = [i for i, d in enumerate(heldout.digests) if d not in dup]
    notes = []
    if len(keep) < len(heldout):
        notes.append(f"{len(heldout) - len(keep)} held-out image(s) are exact copies of training images: "
                     f"left out of the calibration")
    if not keep:
        raise ValueError("every --real image is also a --train image: the memorization threshold needs "
                         "held-out real images that were never trained on")
    if len(keep) < 20:
        notes.append(f"calibrated on {len(keep)} held-out images only: the false-positive rate is a rough estimate")
    feat = (lambda s, idx=None: None) if feature is None else \
        (lambda s, idx=None: s.features[feature] if idx is None else s.features[feature][idx])
    det = Detector(train.small, feat(train))
    cal = det.calibrate(heldout.small[keep], feat(heldout, keep), fpr)
    scores, ch = det.detect(fake.small, feat(fake))
    which = det.margins(ch).argmin(0)  # the channel that gives each image its score
    names = list(ch)
    flagged = scores < 0
    per_image = []
    for i in range(len(fake)):
        by = names[int(which[i])]
        j = int(ch[by][0][i])
        row = {"image": fake.names[i], "score": float(scores[i]), "flagged": bool(flagged[i]), "by": by,
               "nearest": train.names[j], "nearest_index": j}
        for name, (idx, dist, rel) in ch.items():
            row[f"{name}_nearest"] = train.names[int(idx[i])]
            row[f"{name}_distance"] = float(dist[i])
            row[f"{name}_relative"] = float(math.exp(float(rel[i])))
        per_image.append(row)
    return {**cal, "feature_extractor": feature, "n_train": len(train), "n_generated": len(fake),
            "n_flagged": int(flagged.sum()), "flagged_fraction": float(flagged.double().mean()),
            "flagged": [r for r in per_image if r["flagged"]], "per_image": per_image, "notes": notes}
