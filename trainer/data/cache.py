"""Decode every image once into a memory-mapped uint8 cache, then train from it.

Images are kept whole: resized so the shorter side is the cache size, aspect kept, no crop (cropping
is the transforms' job, as in timm: trainer/data/transforms.py). Images differ in shape, so the cache
is a flat byte file (``<stem>.u8``) with a table of (offset, height, width) per image
(``<stem>.rows.npy``); ``ImageCache.array[i]`` is image i as an [H, W, 3] view.

The files are keyed by a hash of (dataset name, image paths, cache size, cache version), built
under temporary names and renamed when complete (the byte file last), so a killed build (or a disk
that fills up) never leaves a file that looks finished. Images that fail to decode are reported
together after the pass.

Where the cache lives (one documented place, shared by every run, trial and seed, never beside a
run folder): ``--cache-dir`` if given, else ``$MEDPEFT_CACHE_DIR/images``, else
``$XDG_CACHE_HOME/medpeft/images`` (``~/.cache/medpeft/images``): :func:`image_cache_dir`.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from adapters.io import temp_file_beside

from .errors import DataError
from .images import load_image
from .index import DatasetIndex
from .transforms import resize_shorter_side

CACHE_VERSION = 2  # 2: whole images (shorter side to the cache size); 1 cut them to centre squares
MAX_LISTED = 10
CACHE_ENV = "MEDPEFT_CACHE_DIR"


def medpeft_cache_root() -> Path:
    """MedPEFT's cache folder: ``$MEDPEFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/medpeft`` (``~/.cache/medpeft``)."""
    root = os.environ.get(CACHE_ENV) or os.environ.get("MEDPEFT_CACHE")
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "medpeft"


def image_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The decoded-image cache folder: ``cache_dir`` (``--cache-dir``) if given, else the documented default."""
    return Path(cache_dir).expanduser() if cache_dir else medpeft_cache_root() / "images"


class RaggedImages:
    """Read-only images of different shapes in one flat uint8 file: ``images[i]`` is an [H, W, 3] view.

    ``rows`` is int64 [N, 3]: byte offset, height, width of each image. The file is opened lazily
    (memory-mapped), and pickling keeps only the paths, so DataLoader workers reopen it cheaply.
    """

    def __init__(self, data_path, rows: np.ndarray):
        self.data_path = os.fspath(data_path)
        self.rows = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        self._data = None

    @classmethod
    def open(cls, data_path) -> "RaggedImages":
        """Open a cache from its byte file (``<stem>.u8``; the table ``<stem>.rows.npy`` beside it)."""
        data_path = Path(data_path)
        return cls(data_path, np.load(rows_path(data_path)))

    @property
    def data(self) -> np.ndarray:
        if self._data is None:
            self._data = np.memmap(self.data_path, dtype=np.uint8, mode="r")
        return self._data

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        offset, h, w = (int(v) for v in self.rows[i])
        return self.data[offset: offset + h * w * 3].reshape(h, w, 3)

    def shape_of(self, i: int) -> tuple[int, int]:
        """(height, width) of image i, without reading it."""
        return int(self.rows[i, 1]), int(self.rows[i, 2])

    def __getstate__(self):
        return {**self.__dict__, "_data": None}


def rows_path(data_path) -> Path:
    data_path = Path(data_path)
    return data_path.with_name(data_path.name[: -len(".u8")] + ".rows.npy")


@dataclass
class ImageCache:
    """A built (or reused) cache: ``array[i]`` is image i of `index` ([H, W, 3] uint8, shorter side = size)."""

    array: RaggedImages    # memory-mapped read-only
    index: DatasetIndex    # the cached images (undecodable ones dropped when skip_bad=True)
    path: Path             # the byte file (<stem>.u8)
    built: bool            # True if decoded in this call, False if an existing cache was reused


def decode_resized(path: str, size: int) -> np.ndarray:
    """Decode one image file into uint8 [H, W, 3] with min(H, W) == size, aspect kept."""
    img = load_image(path, min_size=size)
    return np.ascontiguousarray(np.asarray(resize_shorter_side(img, size), dtype=np.uint8))


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


def _try_reuse(data: Path, meta_path: Path, index: DatasetIndex, size: int, skip_bad: bool) -> ImageCache | None:
    if not (data.is_file() and meta_path.is_file() and rows_path(data).is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        images = RaggedImages.open(data)
    except (OSError, ValueError):
        return None
    bad = meta.get("bad", [])
    keep = np.asarray(meta.get("rows", []), dtype=np.int64)
    table = images.rows
    if (meta.get("num_images") != len(index) or meta.get("cache_size") != size or len(table) != len(keep)
            or not len(table) or data.stat().st_size != int(table[-1, 0] + table[-1, 1] * table[-1, 2] * 3)):
        return None
    if bad and not skip_bad:
        return None  # rebuild: the bad files may have been fixed; still-bad ones are then reported
    sub = index if not bad else index.subset(keep, note=_bad_note(bad))
    return ImageCache(array=images, index=sub, path=data, built=False)


def _bad_error(bad: list, total: int) -> DataError:
    lines = "\n".join(f"  {p}: {why}" for p, why in bad[:MAX_LISTED])
    more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    return DataError(f"{len(bad)} of {total} images could not be decoded:\n{lines}{more}\n"
                     f"Fix or remove them, or pass --skip-bad-images (skip_bad=True) to drop them.")


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

    Each image is resized so its shorter side is cache_size, keeping its aspect ratio and all of it
    (transforms.resize_shorter_side). Undecodable images: DataError listing them (up to 10) after
    the whole pass, unless skip_bad, which drops them (returned index is then smaller, with a note).
    Build the cache before make_splits, so the splits refer to the returned index.
    """
    if len(index) == 0:
        raise DataError(f"{index.name}: no images to cache.")
    size = int(cache_size)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{index.name}-{size}px-{cache_key(index, size)}"
    data, meta_path = cache_dir / f"{stem}.u8", cache_dir / f"{stem}.json"
    reused = _try_reuse(data, meta_path, index, size, skip_bad)
    if reused is not None:
        return reused

    _remove_stale_temps(cache_dir, stem)
    n = len(index)
    tmp = cache_dir / f"{stem}.tmp-{os.getpid()}.u8"
    tmp_rows = cache_dir / f"{stem}.tmp-{os.getpid()}.rows.npy"
    bad, good, table, offset = [], [], [], 0
    try:
        with open(tmp, "wb") as out:
            tasks = [(p, size) for p in index.paths]
            for i, arr, why in _decode_all(tasks, workers, progress, f"caching {index.name} @{size}px"):
                if arr is None:
                    bad.append((index.paths[i], why))
                    continue
                out.write(arr.tobytes())
                table.append((offset, arr.shape[0], arr.shape[1]))
                offset += arr.size
                good.append(i)
        if bad and not skip_bad:
            raise _bad_error(bad, n)
        if not good:
            raise DataError(f"{index.name}: none of the {n} images could be decoded; first: "
                            f"{bad[0][0]}: {bad[0][1]}")
        np.save(tmp_rows, np.asarray(table, dtype=np.int64))
        meta = {"version": CACHE_VERSION, "name": index.name, "cache_size": size, "resize": "shorter_side",
                "num_images": n, "rows": good, "bad": [list(b) for b in bad]}
        fd, meta_tmp = temp_file_beside(meta_path)
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f)
        os.replace(meta_tmp, meta_path)
        os.replace(tmp_rows, rows_path(data))
        os.replace(tmp, data)  # last: a finished byte file means a complete cache
    finally:
        for leftover in (tmp, tmp_rows):
            leftover.unlink(missing_ok=True)
    sub = index if not bad else index.subset(np.asarray(good), note=_bad_note(bad))
    return ImageCache(array=RaggedImages.open(data), index=sub, path=data, built=True)


class CachedImageDataset(Dataset):
    """(image tensor, label) pairs read from a cache.

    cache: an ImageCache, its RaggedImages, the path of its byte file (.u8), or any uint8
    [N, H, W, 3] array / memmap (one shape for all images).
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
            cache = RaggedImages.open(cache)
        if isinstance(cache, np.memmap) and cache.filename:
            self._path, self._array = cache.filename, cache
        else:
            self._array = cache if isinstance(cache, RaggedImages) else np.asarray(cache)
        rows = len(self.array)
        self.labels = np.asarray(labels)
        if len(self.labels) != rows:
            raise DataError(f"CachedImageDataset: {len(self.labels)} labels for {rows} cached images.")
        self.indices = np.arange(rows) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= rows):
            raise DataError(f"CachedImageDataset: indices must lie in 0..{rows - 1}.")
        self.transform = transform

    @property
    def array(self):
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
