"""Decode every image once into a uint8 array cache ([N, S, S, 3] .npy, memory-mapped), then train from it.

The cache file is keyed by a hash of (dataset name, image paths, cache size, cache version), built
under a temporary name and renamed when complete, so a killed build never leaves a file that
looks finished. Images that fail to decode are reported together after the pass.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from .errors import DataError
from .images import load_image
from .index import DatasetIndex

CACHE_VERSION = 1
MAX_LISTED = 10


@dataclass
class ImageCache:
    """A built (or reused) cache: row i of `array` is image i of `index`."""

    array: np.ndarray      # uint8 [N, S, S, 3], memory-mapped read-only
    index: DatasetIndex    # the cached images (undecodable ones dropped when skip_bad=True)
    path: Path             # the .npy file
    built: bool            # True if decoded in this call, False if an existing cache was reused


def fit_square(img: Image.Image, size: int) -> Image.Image:
    """Resize so the short side is `size` (bicubic), then center-crop to size x size."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def decode_resized(path: str, size: int) -> np.ndarray:
    """Decode one image file into uint8 [size, size, 3]."""
    img = load_image(path, min_size=size)
    return np.asarray(fit_square(img, size), dtype=np.uint8)


def _decode_task(task: tuple[str, int]) -> tuple[np.ndarray | None, str | None]:
    """Worker entry: (array, None) or (None, reason). Never raises, so one bad file cannot stop a pool."""
    path, size = task
    try:
        return decode_resized(path, size), None
    except DataError as exc:
        return None, str(exc).splitlines()[0]
    except Exception as exc:  # noqa: BLE001 - reported to the user with the path
        return None, f"{type(exc).__name__}: {exc}"


def cache_key(index: DatasetIndex, cache_size: int) -> str:
    """Hex digest identifying the cache of this index at this size."""
    blob = json.dumps({"v": CACHE_VERSION, "name": index.name, "size": int(cache_size), "paths": index.paths})
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale_temps(cache_dir: Path, stem: str) -> None:
    """Delete half-written files of killed builds (their process is gone)."""
    for tmp in cache_dir.glob(f"{stem}.tmp-*"):
        try:
            pid = int(tmp.name.split(".tmp-")[1].split(".")[0])
        except (IndexError, ValueError):
            continue
        if not _pid_alive(pid):
            tmp.unlink(missing_ok=True)


def _try_reuse(npy: Path, meta_path: Path, index: DatasetIndex, size: int, skip_bad: bool) -> ImageCache | None:
    if not (npy.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        array = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        return None
    bad = meta.get("bad", [])
    keep = np.asarray(meta.get("rows", []), dtype=np.int64)
    if meta.get("num_images") != len(index) or array.shape != (len(keep), size, size, 3):
        return None
    if bad and not skip_bad:
        return None  # rebuild: the bad files may have been fixed; still-bad ones are then reported
    sub = index if not bad else index.subset(keep, note=_bad_note(bad))
    return ImageCache(array=array, index=sub, path=npy, built=False)


def _bad_error(bad: list, total: int) -> DataError:
    lines = "\n".join(f"  {p}: {why}" for p, why in bad[:MAX_LISTED])
    more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    return DataError(f"{len(bad)} of {total} images could not be decoded:\n{lines}{more}\n"
                     f"Fix or remove them, or pass skip_bad=True to drop them.")


def _bad_note(bad: list) -> str:
    return f"{len(bad)} undecodable images dropped: " + ", ".join(p for p, _ in bad[:MAX_LISTED])


def _decode_all(tasks, workers: int, progress: bool, desc: str):
    """Yield (position, array, reason) in order, in this process or a pool of `workers`."""
    bar = tqdm(total=len(tasks), desc=desc, unit="img", disable=not progress)
    try:
        if workers > 1 and len(tasks) > 1:
            # fork: cheap workers that inherit the loaded modules (as torch's DataLoader does on Linux)
            method = "fork" if "fork" in mp.get_all_start_methods() else None
            with mp.get_context(method).Pool(workers) as pool:
                for i, (arr, why) in enumerate(pool.imap(_decode_task, tasks, chunksize=4)):
                    bar.update()
                    yield i, arr, why
        else:
            for i, task in enumerate(tasks):
                arr, why = _decode_task(task)
                bar.update()
                yield i, arr, why
    finally:
        bar.close()


def build_image_cache(index: DatasetIndex, cache_dir, cache_size: int = 256, workers: int = 2,
                      skip_bad: bool = False, progress: bool = True) -> ImageCache:
    """Decode + resize each image of `index` once into cache_dir, or reuse the cache built before.

    Images are resized (short side = cache_size) and center-cropped to cache_size square.
    Undecodable images: DataError listing them (up to 10) after the whole pass, unless skip_bad,
    which drops them (returned index is then smaller, with a note). Build the cache before
    make_splits, so the splits refer to the returned index.
    """
    if len(index) == 0:
        raise DataError(f"{index.name}: no images to cache.")
    size = int(cache_size)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{index.name}-{size}px-{cache_key(index, size)}"
    npy, meta_path = cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"
    reused = _try_reuse(npy, meta_path, index, size, skip_bad)
    if reused is not None:
        return reused

    _remove_stale_temps(cache_dir, stem)
    n = len(index)
    tmp = cache_dir / f"{stem}.tmp-{os.getpid()}.npy"
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    bad, good = [], []
    try:
        tasks = [(p, size) for p in index.paths]
        for i, arr, why in _decode_all(tasks, workers, progress, f"caching {index.name} @{size}px"):
            if arr is None:
                bad.append((index.paths[i], why))
            else:
                array[i] = arr
                good.append(i)
        if bad and not skip_bad:
            raise _bad_error(bad, n)
        if bad and not good:
            raise DataError(f"{index.name}: none of the {n} images could be decoded; first: "
                            f"{bad[0][0]}: {bad[0][1]}")
        if bad:  # compact the good rows into a smaller file
            compact_tmp = cache_dir / f"{stem}.tmp-{os.getpid()}.compact.npy"
            compact = np.lib.format.open_memmap(compact_tmp, mode="w+", dtype=np.uint8,
                                                shape=(len(good), size, size, 3))
            for j, i in enumerate(good):
                compact[j] = array[i]
            compact.flush()
            del compact
            del array
            os.replace(compact_tmp, tmp)
        else:
            array.flush()
            del array
        meta = {"version": CACHE_VERSION, "name": index.name, "cache_size": size, "num_images": n,
                "rows": good, "bad": [list(b) for b in bad]}
        fd, meta_tmp = tempfile.mkstemp(prefix=meta_path.name + ".", suffix=".tmp", dir=cache_dir)
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f)
        os.replace(meta_tmp, meta_path)
        os.replace(tmp, npy)  # last: a finished .npy means a complete cache
    finally:
        for leftover in (tmp, cache_dir / f"{stem}.tmp-{os.getpid()}.compact.npy"):
            leftover.unlink(missing_ok=True)
    sub = index if not bad else index.subset(np.asarray(good), note=_bad_note(bad))
    return ImageCache(array=np.load(npy, mmap_mode="r"), index=sub, path=npy, built=True)


class CachedImageDataset(Dataset):
    """(image tensor, label) pairs read from a cache array.

    cache: an ImageCache, a uint8 [N, H, W, 3] array / memmap, or the path of a cache .npy file.
    labels: int64 [N] or float32 [N, C], aligned with the cache rows (e.g. ImageCache.index.labels).
    indices: which rows this dataset serves (e.g. splits["train"]); all rows if None.
    transform: applied to a PIL RGB image (e.g. build_transforms(cfg, train=True)); without one
    the image becomes a float tensor [3, H, W] in 0..1.
    A memory-mapped cache is reopened lazily in each DataLoader worker rather than pickled.
    """

    def __init__(self, cache, labels, indices=None, transform=None):
        if isinstance(cache, ImageCache):
            cache = cache.array
        self._path = None
        self._array = None
        if isinstance(cache, (str, os.PathLike)):
            self._path = os.fspath(cache)
        elif isinstance(cache, np.memmap) and cache.filename:
            self._path, self._array = cache.filename, cache
        else:
            self._array = np.asarray(cache)
        rows = len(self.array)
        self.labels = np.asarray(labels)
        if len(self.labels) != rows:
            raise DataError(f"CachedImageDataset: {len(self.labels)} labels for {rows} cached images.")
        self.indices = np.arange(rows) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= rows):
            raise DataError(f"CachedImageDataset: indices must lie in 0..{rows - 1}.")
        self.transform = transform

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self._path, mmap_mode="r")
        return self._array

    def __getstate__(self):
        state = self.__dict__.copy()
        if state["_path"] is not None:
            state["_array"] = None  # reopened by the worker; avoids pickling the whole cache
        return state

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        row = int(self.indices[i])
        img = Image.fromarray(np.asarray(self.array[row]))
        if self.transform is not None:
            x = self.transform(img)
        else:
            x = torch.from_numpy(np.array(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return x, torch.as_tensor(self.labels[row])
