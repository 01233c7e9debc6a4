"""Tests of the decoded-image cache (whole images, aspect kept) and the preprocessing it records."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import resolve_data_config

import trainer.data.cache as cache_mod
from trainer.data import CachedImageDataset, DataError, DatasetIndex, build_image_cache, build_transforms
from trainer.data.cache import RaggedImages
from trainer.data.transforms import (PRE_RESIZE, cache_size_for, center_square, pre_resize, pre_resize_config,
                                     resize_shorter_side)

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]


def save_png(path: Path, color, size) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def image_folder_index(tmp_path, n=6) -> DatasetIndex:
    paths = []
    for i in range(n):
        size = (40, 24) if i % 2 else (24, 40)                # non-square both ways (width, height)
        paths.append(str(save_png(tmp_path / "imgs" / f"{i}.png", COLORS[i % 6], size)))
    return DatasetIndex("tiny", paths, np.arange(n) % 2, ["x", "y"])


def striped(width: int, height: int) -> Image.Image:
    """Grey image with a red left edge and a blue right edge (what a centre crop cuts off)."""
    arr = np.full((height, width, 3), 128, np.uint8)
    arr[:, : width // 10] = (255, 0, 0)
    arr[:, -(width // 10):] = (0, 0, 255)
    return Image.fromarray(arr)


def test_cache_built_once_and_reused(tmp_path, monkeypatch):
    index = image_folder_index(tmp_path)
    calls = []
    real = cache_mod.decode_resized
    monkeypatch.setattr(cache_mod, "decode_resized", lambda p, s: calls.append(p) or real(p, s))
    first = build_image_cache(index, tmp_path / "cache", cache_size=16, workers=0, progress=False)
    assert first.built and len(calls) == 6 and len(first.array) == 6
    # whole images, shorter side 16: 24x40 (w x h) -> 16x26, 40x24 -> 26x16
    assert first.array[0].shape == (26, 16, 3) and first.array[1].shape == (16, 26, 3)
    assert first.array[0].dtype == np.uint8 and first.array.shape_of(1) == (16, 26)
    assert (first.array[0] == (255, 0, 0)).all() and (first.array[2] == (0, 0, 255)).all()
    second = build_image_cache(index, tmp_path / "cache", cache_size=16, workers=0, progress=False)
    assert not second.built and len(calls) == 6                          # no decoding the second time
    assert all(np.array_equal(second.array[i], first.array[i]) for i in range(6))
    other_size = build_image_cache(index, tmp_path / "cache", cache_size=12, workers=0, progress=False)
    assert other_size.built and len(calls) == 12 and min(other_size.array[3].shape[:2]) == 12


def test_cache_keeps_the_whole_image(tmp_path):
    path = tmp_path / "ham.png"
    striped(600, 450).save(path)                                         # HAM10000's 600x450
    cache = build_image_cache(DatasetIndex("one", [str(path)], [0], ["a"]), tmp_path / "c", cache_size=64,
                              workers=0, progress=False)
    img = cache.array[0]
    assert img.shape == (64, 85, 3)                                      # 600 * 64 / 450 = 85.3
    assert tuple(img[32, 2]) == (255, 0, 0) and tuple(img[32, -3]) == (0, 0, 255)  # both edges survive
    old = np.asarray(center_square(striped(600, 450), 64))               # what version 1 cached
    assert old.shape == (64, 64, 3) and (old[:, :, 2] < 200).all()       # the blue edge was cut off
    meta = json.loads(cache.path.with_suffix(".json").read_text())
    assert meta["resize"] == "shorter_side" and meta["version"] == cache_mod.CACHE_VERSION


def test_cache_pool_matches_in_process(tmp_path):
    index = image_folder_index(tmp_path)
    a = build_image_cache(index, tmp_path / "c1", cache_size=16, workers=0, progress=False)
    b = build_image_cache(index, tmp_path / "c2", cache_size=16, workers=2, progress=False)
    assert all(np.array_equal(a.array[i], b.array[i]) for i in range(6))


def test_cache_reports_bad_images_or_skips_them(tmp_path, monkeypatch):
    index = image_folder_index(tmp_path)
    Path(index.paths[1]).write_text("not an image")
    data = Path(index.paths[4]).read_bytes()
    Path(index.paths[4]).write_bytes(data[: len(data) // 2])
    calls = []
    real = cache_mod.decode_resized
    monkeypatch.setattr(cache_mod, "decode_resized", lambda p, s: calls.append(p) or real(p, s))
    with pytest.raises(DataError) as err:
        build_image_cache(index, tmp_path / "cache", cache_size=16, workers=0, progress=False)
    message = str(err.value)
    assert "2 of 6 images could not be decoded" in message
    assert index.paths[1] in message and index.paths[4] in message
    assert len(calls) == 6                                              # reported after the whole pass
    assert not list((tmp_path / "cache").glob("*.u8"))                  # nothing left that looks finished
    assert not list((tmp_path / "cache").glob("*.tmp-*"))
    kept = build_image_cache(index, tmp_path / "cache", cache_size=16, workers=0, skip_bad=True, progress=False)
    assert kept.built and len(kept.index) == 4 and len(kept.array) == 4
    assert index.paths[1] not in kept.index.paths and any("2 undecodable" in n for n in kept.index.notes)
    assert (kept.array[1] == (0, 0, 255)).all()                         # rows follow the kept index
    again = build_image_cache(index, tmp_path / "cache", cache_size=16, workers=0, skip_bad=True, progress=False)
    assert not again.built and again.index.paths == kept.index.paths


def test_cache_survives_killed_build(tmp_path, monkeypatch):
    index = image_folder_index(tmp_path)
    real = cache_mod.decode_resized

    def dies_midway(path, size):
        if path == index.paths[3]:
            raise KeyboardInterrupt
        return real(path, size)

    monkeypatch.setattr(cache_mod, "decode_resized", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        build_image_cache(index, tmp_path / "cache", cache_size=16, workers=0, progress=False)
    assert not list((tmp_path / "cache").glob("*.u8")) and not list((tmp_path / "cache").glob("*.rows.npy"))
    monkeypatch.setattr(cache_mod, "decode_resized", real)
    done = build_image_cache(index, tmp_path / "cache", cache_size=16, workers=0, progress=False)
    assert done.built and len(done.array) == 6
    done.path.write_bytes(done.path.read_bytes()[:-5])                  # a damaged byte file is rebuilt
    assert build_image_cache(index, tmp_path / "cache", cache_size=16, workers=0, progress=False).built


def test_cached_dataset_with_timm_transforms(tmp_path):
    index = image_folder_index(tmp_path)
    cache = build_image_cache(index, tmp_path / "cache", cache_size=32, workers=0, progress=False)
    cfg = {"input_size": [3, 24, 24], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
           "interpolation": "bicubic", "crop_pct": 0.75, "crop_mode": "center", "num_classes": 2}
    assert cache_size_for(cfg) == 32
    splits = {"train": np.array([0, 1, 2, 3]), "val": np.array([4, 5])}
    train = CachedImageDataset(cache, cache.index.labels, splits["train"], build_transforms(cfg, train=True))
    val = CachedImageDataset(cache.array, cache.index.labels, splits["val"], build_transforms(cfg, train=False))
    x, y = val[0]
    assert x.shape == (3, 24, 24) and y.dtype == torch.int64 and int(y) == 0
    # magenta (255, 0, 255) after normalisation: (1 - .5) / .25 = 2 and (0 - .5) / .25 = -2
    magenta = val[1][0]
    assert torch.allclose(magenta[:, 12, 12], torch.tensor([2.0, -2.0, 2.0]), atol=1e-4)
    assert train[0][0].shape == (3, 24, 24) and train[1][0].shape == (3, 24, 24) and len(train) == 4
    batch = next(iter(torch.utils.data.DataLoader(val, batch_size=2)))
    assert batch[0].shape == (2, 3, 24, 24) and batch[1].tolist() == [0, 1]
    assert len(pickle.dumps(val)) < 10_000                               # the cache is reopened, not pickled
    plain = CachedImageDataset(str(cache.path), cache.index.labels)
    x0, _ = plain[0]
    assert x0.shape == (3, 53, 32) and float(x0[0].mean()) == pytest.approx(1.0)  # whole 24x40 image
    square = CachedImageDataset(np.zeros((6, 8, 8, 3), np.uint8), cache.index.labels)  # plain arrays still work
    assert square[0][0].shape == (3, 8, 8)
    ml = CachedImageDataset(cache, np.eye(6, 3, dtype=np.float32))
    assert ml[1][1].dtype == torch.float32 and ml[1][1].tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(DataError, match="labels"):
        CachedImageDataset(cache, np.zeros(3))
    assert isinstance(pickle.loads(pickle.dumps(cache.array)), RaggedImages)


def test_eval_on_the_cache_matches_timms_eval_on_the_original():
    dcfg = {"input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic",
            "crop_pct": 0.9, "crop_mode": "center"}
    assert cache_size_for(dcfg) == 71                                   # timm's floor(64 / 0.9)
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (15, 20, 3)), np.ones((10, 10, 1))).astype(np.uint8)
    original = Image.fromarray(smooth)                                   # 200 x 150, not square
    eval_tf = build_transforms(dcfg, train=False)
    ours = eval_tf(resize_shorter_side(original, cache_size_for(dcfg)))
    timm_direct = eval_tf(original)
    assert ours.shape == timm_direct.shape == (3, 64, 64)
    assert torch.equal(ours, timm_direct)                                # the same single resample


def test_pre_resize_follows_the_recorded_mode():
    img = striped(120, 60)
    dcfg = {"input_size": [3, 32, 32], "crop_pct": 0.875}
    dcfg[PRE_RESIZE] = pre_resize_config(dcfg)
    assert dcfg[PRE_RESIZE] == {"mode": "shorter_side", "size": 36, "interpolation": "bicubic"}
    assert pre_resize(img, dcfg).size == (72, 36)
    legacy = {"input_size": [3, 32, 32], "crop_pct": 0.875}              # adapters saved before: squares
    assert pre_resize(img, legacy).size == (37, 37)                     # ceil(32 / 0.875), as version 1
    with pytest.raises(DataError, match="pre_resize"):
        pre_resize(img, {**dcfg, PRE_RESIZE: {"mode": "stretch"}})


def test_trainer_records_pre_resize_in_the_data_config():
    from adapters import create_backbone
    from adapters.backbones import TINY_VIT
    from trainer.config import TrainConfig
    from trainer.loops.classify import model_data_config

    model = create_backbone(TINY_VIT, 2, pretrained=False)
    dcfg = model_data_config(model, TrainConfig(method="lora", backbone=TINY_VIT))
    assert dcfg[PRE_RESIZE]["mode"] == "shorter_side"
    assert dcfg[PRE_RESIZE]["size"] == cache_size_for(resolve_data_config({}, model=model))
