"""Linear probing on cached frozen features (trainer/features.py): computed once and reused, the
head trained on them is the model's own head (same logits as the full model on the images), the
saved adapter is an ordinary linear_probe adapter that reproduces the recorded test metrics, and an
epoch on features is much cheaper than one through the backbone."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from timm.models.efficientnet import EfficientNet

from adapters import OFFLINE_LITE0, apply_method, create_backbone
from adapters.backbones import TINY_CNN, TINY_VIT
from adapters.io import WEIGHTS_NAME, load_adapter
from trainer.__main__ import main as trainer_main
from trainer.loops.classify import cache_size_for
from trainer.cli import parse_config
from trainer.config import TrainConfig
from trainer.data import CachedImageDataset, build_image_cache, build_transforms, load_dataset, load_splits
from trainer.loops.features import (HeadOnly, compare_epoch_times, feature_key, head_splits, pooled_features,
                              split_features)
from trainer.loops.metrics import classification_metrics

from tests.helpers import write_shapes


def lp_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--method", "linear_probe", "--dataset", "imagefolder", "--data-dir", str(data),
            "--backbone", OFFLINE_LITE0, "--img-size", "56", "--epochs", "20", "--patience", "20",
            "--batch-size", "8", "--lr", "5e-2", "--num-workers", "0", "--output-dir", str(out),
            "--cache-dir", str(out.parent / ".cache"), *extra]  # one cache shared by the runs (not the default's)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same linear-probe run twice (two output folders, one cache folder), counting how many
    images the backbone sees."""
    root = tmp_path_factory.mktemp("lp")
    data = write_shapes(root / "shapes")
    seen: list[int] = []
    original = EfficientNet.forward_features

    def counting(self, x):
        seen.append(len(x))
        return original(self, x)

    counts = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(EfficientNet, "forward_features", counting)
        for name in ("run1", "run2"):
            seen.clear()
            assert trainer_main(lp_args(data, root / name)) == 0
            counts.append(sum(seen))
    return root, data, counts


@pytest.mark.slow
def test_features_are_computed_once_then_reused(two_runs):
    root, _, (first, second) = two_runs
    # 36 images once (each in one split), over all epochs, + the check that model(x) == head(features)
    # (2 random images, through model(x) and through pooled_features).
    assert first == 36 + 2 * 2
    assert second == 0, "the second run must reuse the cached features, not run the backbone"
    files = sorted(p.name for p in (root / ".cache" / "features").iterdir())
    assert [f.split("-")[-2] for f in files] == ["test", "train", "val"]
    r1, r2 = (json.loads((root / n / "results.json").read_text()) for n in ("run1", "run2"))
    assert r1["metrics"]["test"]["f1_macro"] == r2["metrics"]["test"]["f1_macro"]
    assert len(json.loads((root / "run1" / "seed_0" / "history.json").read_text())) == 20


def test_saved_adapter_reproduces_test_metrics_and_logits_on_images(two_runs):
    root, data, _ = two_runs
    out = root / "run1"
    results = json.loads((out / "results.json").read_text())
    folder = out / results["adapter_dir"]
    # An ordinary linear_probe adapter folder: the head tensors under the model's own names.
    assert set(load_file(str(folder / WEIGHTS_NAME))) == {"classifier.weight", "classifier.bias"}
    model, cfg = load_adapter(folder)
    assert cfg.method == "linear_probe" and cfg.total_params == results["total_params"]
    # The test split's images, decoded and preprocessed as in training, through the reloaded model.
    index = load_dataset("imagefolder", str(data))
    cache = build_image_cache(index, root / ".cache", cache_size_for(cfg.data_config), workers=1, progress=False)
    index = cache.index
    splits = load_splits(out / "seed_0" / "splits.json", index)
    ds = CachedImageDataset(cache, index.labels, splits["test"], build_transforms(cfg.data_config, train=False))
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.as_tensor(index.labels[splits["test"]])
    with torch.no_grad():
        logits = model(x)
    test = classification_metrics(logits, y, cfg.class_names)
    assert test["f1_macro"] == pytest.approx(cfg.metrics["test_f1_macro"], abs=1e-6)
    assert test["f1_macro"] == pytest.approx(results["metrics"]["test"]["f1_macro"]["mean"], abs=1e-6)
    assert test["f1_macro"] > 0.5, "the probe should learn the shapes from pretrained features"
    # What training saw: the cached features through the same head give the same logits.
    tcfg = TrainConfig(method="linear_probe", backbone=OFFLINE_LITE0, img_size=56, batch_size=8, num_workers=0)
    feats = split_features(tcfg, model, index, cache, cfg.data_config, splits, "cpu", log=lambda *_: None)
    with torch.no_grad():
        from_features = HeadOnly(model).eval()(feats["test"])
    assert torch.allclose(from_features, logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backbone", [TINY_VIT, TINY_CNN])
def test_head_of_pooled_features_is_the_model(backbone):
    torch.manual_seed(0)
    model = apply_method(create_backbone(backbone, 4, pretrained=False), "linear_probe").eval()
    x = torch.randn(3, 3, 32, 32)
    assert head_splits(model, (3, 32, 32))
    with torch.no_grad():
        assert torch.allclose(HeadOnly(model)(pooled_features(model, x)), model(x), atol=1e-5)
    head = HeadOnly(model)
    assert [p.requires_grad for p in head.parameters()] == [True, True]  # the model's own head parameters
    assert all(any(p is q for q in model.parameters()) for p in head.parameters())


def test_a_model_that_is_not_head_of_features_is_detected():
    model = create_backbone(TINY_VIT, 3, pretrained=False)
    plain_forward = model.forward
    model.forward = lambda x: plain_forward(x) * 2  # e.g. distilled DeiT averages two heads
    assert not head_splits(model, (3, 32, 32))


def test_feature_key_depends_on_everything_that_changes_features():
    rows = np.arange(10)
    args = dict(backbone="b", pretrained=True, fingerprint="w", dcfg={"input_size": [3, 32, 32]},
                image_cache="c.npy", rows=rows, precision="no")
    key = feature_key(**args)
    assert key == feature_key(**args)
    for change in (dict(backbone="b2"), dict(pretrained=False), dict(fingerprint="w2"),
                   dict(dcfg={"input_size": [3, 64, 64]}), dict(image_cache="d.npy"), dict(rows=rows[::-1]),
                   dict(precision="bf16")):
        assert feature_key(**{**args, **change}) != key, change
    assert parse_config(["--no-cache-features"]).cache_features is False
    assert parse_config([]).cache_features is True


@pytest.mark.slow
def test_an_epoch_on_cached_features_is_much_faster():
    torch.manual_seed(0)
    model = apply_method(create_backbone(OFFLINE_LITE0, 3, pretrained=True), "linear_probe")
    images, labels = torch.randn(48, 3, 64, 64), torch.randint(0, 3, (48,))
    r = compare_epoch_times(model, images, labels, batch_size=16)
    print(f"\nlinear-probe epoch of {r['images']} images (EfficientNet-Lite0 @64px): through the frozen backbone "
          f"{1000 * r['backbone_s']:.1f} ms, on cached features {1000 * r['features_s']:.2f} ms "
          f"-> {r['speedup']:.0f}x (one-time feature extraction {1000 * r['extract_s']:.1f} ms)")
    assert r["speedup"] > 2


def test_transforms_for_reproduces_the_recorded_test_metric_from_image_files(two_runs):
    """The public path a user takes outside the trainer: load_adapter + transforms_for + load_image on
    the test split's files gives exactly the test metric the run recorded."""
    from trainer.data import load_image, transforms_for

    root, data, _ = two_runs
    out = root / "run1"
    results = json.loads((out / "results.json").read_text())
    model, cfg = load_adapter(out / results["adapter_dir"])
    split = json.loads((out / "seed_0" / "splits.json").read_text())
    files = [Path(split["root"]) / rel for rel in split["splits"]["test"]]
    preprocess = transforms_for(cfg)
    x = torch.stack([preprocess(load_image(f)) for f in files])
    y = torch.as_tensor([cfg.class_names.index(f.parent.name) for f in files])
    with torch.no_grad():
        test = classification_metrics(model(x), y, cfg.class_names)
    assert test["f1_macro"] == pytest.approx(results["metrics"]["test"]["f1_macro"]["mean"], abs=1e-6)
    assert test["accuracy"] == pytest.approx(results["metrics"]["test"]["accuracy"]["mean"], abs=1e-6)
