"""Splits of image/report pairs for text-to-image fine-tuning: the seeded training subsample (a
``fraction`` or ``n_train`` of the pool) and a validation split of whole patients never trained on."""
from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import DataError


@dataclass
class Pair:
    path: str
    text: str
    group: str = ""  # mimic_cxr: patient group (p10..p19)
    study: str = ""


def subsample(pairs: list[Pair], fraction: float, n_train: int | None, seed: int) -> list[Pair]:
    if n_train is None and fraction >= 1:
        return list(pairs)
    n = int(n_train) if n_train is not None else max(1, int(round(len(pairs) * fraction)))
    if n > len(pairs):
        raise DataError(f"n_train={n} but only {len(pairs)} training pairs are available")
    rng = random.Random(seed)
    idx = sorted(rng.sample(range(len(pairs)), n))
    return [pairs[i] for i in idx]


def _patient(p: Pair) -> str:
    """The patient a pair belongs to (mimic_cxr: pNN/pXXXXXXXX/...; otherwise the pair itself)."""
    parts = p.study.split("/")
    return parts[1] if len(parts) > 1 else p.path


def hold_out(pairs: list[Pair], frac: float | None, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Split ``pairs`` into (kept, held-out) with about ``frac`` of them held out, whole patients at a
    time (a patient's other images would otherwise look like memorized copies), seeded."""
    if not frac or len(pairs) < 2:
        return list(pairs), []
    patients = sorted({_patient(p) for p in pairs})
    random.Random(seed * 7919 + 17).shuffle(patients)
    want, chosen, n = max(1, int(round(len(pairs) * frac))), set(), 0
    counts: dict[str, int] = {}
    for p in pairs:
        counts[_patient(p)] = counts.get(_patient(p), 0) + 1
    for pt in patients:
        if n >= want or len(chosen) == len(patients) - 1:
            break
        chosen.add(pt)
        n += counts[pt]
    return [p for p in pairs if _patient(p) not in chosen], [p for p in pairs if _patient(p) in chosen]


def train_and_val(pool: list[Pair], fraction: float, n_train: int | None, val_frac: float | None,
                  seed: int) -> tuple[list[Pair], list[Pair]]:
    """The training pairs (``fraction`` / ``n_train`` of ``pool``, exactly as without validation) and,
    with ``val_frac``, about ``val_frac * len(pool)`` validation pairs of patients outside them: taken
    from the pairs a fraction leaves unused when there are enough, else held out before subsampling."""
    train = subsample(pool, fraction, n_train, seed)
    if not val_frac:
        return train, []
    used = {_patient(p) for p in train}
    spare = [p for p in pool if _patient(p) not in used]
    want = max(1, int(round(val_frac * len(pool))))
    if len(spare) >= want:
        return train, hold_out(spare, want / len(spare), seed)[1]
    kept, val = hold_out(pool, val_frac, seed)
    return subsample(kept, min(1.0, fraction), min(n_train, len(kept)) if n_train else None, seed), val


