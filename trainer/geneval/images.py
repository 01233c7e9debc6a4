"""Image sets for generative metrics: one pass over a folder (or list) of images computes everything the
metrics need, so that no image is decoded twice and no full-size image is kept in memory:

- the features of each requested extractor (``ImageSet.features[name]``, ``[N, D]``);
- a grey 64 x 64 copy for pixel-space memorization (``ImageSet.small``);
- a grey 192 x 192 copy for MS-SSIM diversity (``ImageSet.thumbs``, when asked for);
- a hash of the decoded pixels (``ImageSet.digests``: exact duplicates between sets).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..loops.fid import IMAGE_EXTENSIONS
from .extractors import Extractor

SMALL = 64
THUMB = 192
DICOM_EXTENSIONS = (".dcm", ".dicom")


class ImageSetError(ValueError):
    """A folder that cannot be used as an image set (one line, for the user)."""


def list_images(folder: str | os.PathLike, role: str = "images") -> list[Path]:
    """Image files under ``folder`` (recursive, sorted); one-line errors for a missing or empty folder."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise ImageSetError(f"--{role}: {folder} does not exist")
    if not folder.is_dir():
        raise ImageSetError(f"--{role}: {folder} is not a folder of images")
    exts = IMAGE_EXTENSIONS + DICOM_EXTENSIONS
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts and p.is_file())
    if not files:
        raise ImageSetError(f"--{role}: {folder} holds no images ({', '.join(exts)})")
    return files


def to_uint8(image) -> torch.Tensor:
    """PIL image / path / array / tensor -> uint8 ``[3, H, W]``."""
    from ..loops.fid import to_uint8 as convert

    return convert(image)


@dataclass
class ImageSet:
    names: list[str]
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    small: torch.Tensor | None = None  # [N, 64, 64] float grey in [0, 1]
    thumbs: torch.Tensor | None = None  # [N, 192, 192] uint8 grey
    digests: list[str] = field(default_factory=list)
    sources: list = field(default_factory=list)  # paths (for contact sheets), or None

    def __len__(self) -> int:
        return len(self.names)


def _grey(img: torch.Tensor, size: int) -> torch.Tensor:
    x = img.float().mean(0, keepdim=True)[None] / 255.0
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0, 0]


def load_set(images: Sequence | str | os.PathLike, extractors: Sequence[Extractor] = (), *, role: str = "images",
             thumbs: bool = False, batch_size: int = 32, progress: bool = True) -> ImageSet:
    """Read ``images`` (a folder, or a sequence of paths / PIL images / uint8 tensors) once and compute
    every extractor's features, the 64 px grey copies and (``thumbs``) the 192 px ones. Unreadable files
    raise one :class:`ImageSetError` naming them."""
    from tqdm.auto import tqdm

    from ..data.errors import DataError

    if isinstance(images, (str, os.PathLike)):
        items: Sequence = list_images(images, role)
    elif isinstance(images, torch.Tensor) and images.ndim == 4:
        items = list(images)
    else:
        items = list(images)
    if not items:
        raise ImageSetError(f"--{role}: no images")
    names = [Path(i).name if isinstance(i, (str, os.PathLike)) else f"{role}_{k:05d}" for k, i in enumerate(items)]
    out = ImageSet(names, sources=[i if isinstance(i, (str, os.PathLike)) else None for i in items])
    small, thumb, bad = [], [], []
    pending: dict[str, list[torch.Tensor]] = {e.name: [] for e in extractors}
    feats: dict[str, list[torch.Tensor]] = {e.name: [] for e in extractors}

    def flush():
        for e in extractors:
            if pending[e.name]:
                feats[e.name].append(e(torch.stack(pending[e.name])))
                pending[e.name] = []

    for k, item in enumerate(tqdm(items, desc=f"reading {role}", disable=not progress or len(items) < 8,
                                  dynamic_ncols=True)):
        try:
            img = to_uint8(item)
        except (DataError, OSError, ValueError) as e:
            bad.append(f"{names[k]} ({str(e).splitlines()[0][:80]})")
            continue
        out.digests.append(hashlib.sha1(img.numpy().tobytes() + str(tuple(img.shape)).encode()).hexdigest())
        small.append(_grey(img, SMALL))
        if thumbs:
            thumb.append((_grey(img, THUMB) * 255).round().to(torch.uint8))
        for e in extractors:
            pending[e.name].append(e.prepare(img))
        if len(small) % batch_size == 0:
            flush()
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ImageSetError(f"--{role}: {len(bad)} unreadable image(s): {'; '.join(bad[:3])}{more}")
    flush()
    out.small = torch.stack(small)
    out.thumbs = torch.stack(thumb) if thumbs else None
    out.features = {name: torch.cat(f) for name, f in feats.items()}
    return out
