"""The Generate tab's Generator keeps one Stable Diffusion pipeline and switches U-Net adapters of every
registered U-Net method on it: a switch gives the image a fresh load gives (same seed), A -> B -> A too,
the base U-Net is never written, and the pipeline is loaded once."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from adapters import METHODS, apply_method, get_method
from adapters.io import AdapterConfig, save_adapter

PROMPT = "Small right pleural effusion."


@pytest.fixture(scope="module", autouse=True)
def _one_thread(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDPEFT_CACHE", str(tmp_path_factory.mktemp("medpeft-cache")))
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from diffusers import UNet2DConditionModel

    from trainer.diffusion import make_tiny_pipeline

    root = tmp_path_factory.mktemp("gen")
    base = make_tiny_pipeline(root / "pipe")
    adapters = {}
    for i, name in enumerate(sorted(m.name for m in METHODS.values() if "unet" in m.families)):
        unet = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet").eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            unet = apply_method(unet, name)
        torch.manual_seed(i)
        with torch.no_grad():
            for p in unet.parameters():
                if p.requires_grad:
                    p.add_(0.02 * torch.randn_like(p))
        adapters[name] = save_adapter(unet, root / name, AdapterConfig(method=name, backbone=str(base), num_classes=0,
                                                                       task="generation"))
    return base, adapters


def img(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.slow  # a fresh pipeline per method to compare with: ~40 s
def test_switching_unet_adapters_equals_a_fresh_load(tiny):
    from trainer.diffusion import load_generation_pipeline, sample
    from trainer.infer import Generator

    base, adapters = tiny
    gen = Generator(device="cpu")
    plain = gen.generate(PROMPT, str(base), None, steps=2, guidance=7.5, seed=3)
    first = {}
    for name, folder in adapters.items():
        first[name] = gen.generate(PROMPT, str(base), str(folder), steps=2, guidance=7.5, seed=3)
        fresh = sample(load_generation_pipeline(str(base), folder, merge=False), PROMPT, 2, 7.5, 3)
        assert np.array_equal(img(first[name]), img(fresh)), f"{name}: a switch differs from a fresh load"
        if get_method(name).merge is not None:  # the merged fresh load: equal up to float rounding
            merged = sample(load_generation_pipeline(str(base), folder), PROMPT, 2, 7.5, 3)
            assert np.abs(img(first[name]) - img(merged)).max() <= 2, name
    assert len(gen._pipes) == 1  # one pipeline for every adapter
    for name in reversed(list(adapters)):  # back again: A -> B -> A
        again = gen.generate(PROMPT, str(base), str(adapters[name]), steps=2, guidance=7.5, seed=3)
        assert np.array_equal(img(again), img(first[name])), name
    assert np.array_equal(img(gen.generate(PROMPT, str(base), None, steps=2, guidance=7.5, seed=3)), img(plain))
    assert len({name for name in first if not np.array_equal(img(first[name]), img(plain))}) >= len(first) - 1
    mem = gen.memory()
    assert mem["bases"] > 0 and mem["adapters"] < len(adapters) * mem["bases"]


def test_a_classification_adapter_is_refused(tiny, tmp_path):
    from tests.helpers.apps import make_adapter
    from trainer.infer import Generator, InferenceError

    base, _ = tiny
    folder = make_adapter(tmp_path / "cls")
    with pytest.raises(InferenceError, match="not a text-to-image"):
        Generator(device="cpu").generate(PROMPT, str(base), str(folder), steps=1)
