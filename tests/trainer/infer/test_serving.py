"""Many adapters on one frozen base (trainer.infer.serving, through the Predictor): every registered
classification method gives the outputs of the adapter loaded alone, switching is exact, the base is never
written, no copy of the base is made per adapter, concurrent requests are correct."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from adapters import METHODS, apply_method, create_backbone, data_config, get_method
from adapters.backbones import TINY_CNN, TINY_VIT
from adapters.io import AdapterConfig, load_adapter, save_adapter
from safetensors.torch import load_file

from trainer.infer import Predictor
from trainer.infer.serving import AdapterServer
from trainer.infer.structures import base_chunk


def make(folder: Path, backbone: str, method: str, seed: int, classes: int = 3, temperature=None,
         names=None, **hp) -> Path:
    """An adapter whose every saved tensor (trainable parameters and saved buffers) is random."""
    torch.manual_seed(seed)
    model = apply_method(create_backbone(backbone, classes, pretrained=False), method, **hp)
    saved = get_method(method).saved_buffers
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
        for n in (saved(model) if saved else []):
            if buffers[n].is_floating_point():
                buffers[n].mul_(1 + 0.1 * torch.rand_like(buffers[n]))
    cfg = AdapterConfig(method=method, backbone=backbone, num_classes=classes, pretrained=False,
                        class_names=names or [f"{method}-{i}" for i in range(classes)], data_config=data_config(model),
                        temperature=temperature)
    return save_adapter(model, folder, cfg)


def server() -> AdapterServer:
    return AdapterServer(lambda cfg: create_backbone(cfg.backbone, cfg.num_classes, pretrained=False),
                         lambda cfg: (cfg.backbone, cfg.num_classes))


def family_methods(family: str) -> list[str]:
    return sorted(m.name for m in METHODS.values() if family in m.families)


SMALL = {"vit": ("adaptformer", "bitfit", "dora", "layernorm", "loha", "lora", "ssf", "vpt_deep"),
         "cnn": ("batchnorm", "lora", "ssf")}
"""The fast tests' zoo (the issue's ViT methods + a peft tuner; BatchNorm statistics on the CNN); the slow
tests take every registered method."""


def _zoo(root, methods_of):
    out = {}
    for backbone, family in ((TINY_VIT, "vit"), (TINY_CNN, "cnn")):
        out[backbone] = [make(root / backbone / m, backbone, m, seed=i) for i, m in enumerate(methods_of(family))]
    # two adapters of one structure (switching copies slots), LoRA of another rank (another structure)
    out["lora"] = [make(root / f"lora-{s}", TINY_VIT, "lora", seed=100 + s) for s in range(2)]
    out["lora"].append(make(root / "lora-r2", TINY_VIT, "lora", seed=102, rank=2, alpha=2))
    return out


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return _zoo(tmp_path_factory.mktemp("zoo"), lambda family: [m for m in family_methods(family) if m in SMALL[family]])


@pytest.fixture(scope="module")
def full_zoo(tmp_path_factory):
    return _zoo(tmp_path_factory.mktemp("full-zoo"), family_methods)


def _tensors(model):
    return [t.detach().clone() for t in list(model.parameters()) + list(model.buffers())]


def check_equal_and_exact(zoo, backbone):
    srv = server()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    folders = zoo[backbone] + (zoo["lora"] if backbone == TINY_VIT else [])
    served, alone = [], []
    for f in folders:
        served.append(srv.load(f))
        model, _ = load_adapter(f, calibrated=False)
        with torch.no_grad():
            alone.append(model(x))
    base = next(iter(srv.bases.values())).model
    before = _tensors(base)
    first = [srv.forward(s, x).clone() for s in served]
    for s, ref, out in zip(served, alone, first):
        assert torch.allclose(out, ref, atol=1e-5, rtol=0), (s.config.method, float((out - ref).abs().max()))
    # A -> B -> A: every order gives the same bits
    for s, out in reversed(list(zip(served, first))):
        assert torch.equal(srv.forward(s, x), out), s.config.method
    assert all(torch.equal(t, u) for t, u in zip(before, _tensors(base))), "the shared base was written"


@pytest.mark.parametrize("backbone", [TINY_VIT, TINY_CNN])
def test_methods_equal_the_adapter_loaded_alone_and_switch_exactly(zoo, backbone):
    check_equal_and_exact(zoo, backbone)


@pytest.mark.slow  # every registered method (38 with the peft tuners): a minute or two
@pytest.mark.parametrize("backbone", [TINY_VIT, TINY_CNN])
def test_every_registered_method_equals_the_adapter_loaded_alone_and_switches_exactly(full_zoo, backbone):
    check_equal_and_exact(full_zoo, backbone)


def test_adapters_of_one_structure_share_it_and_switch_by_slots(zoo):
    srv = server()
    a, b, r2 = (srv.load(f) for f in zoo["lora"])
    assert a.structure is b.structure and r2.structure is not a.structure
    x = torch.randn(1, 3, 32, 32)
    ya = srv.forward(a, x).clone()
    yb = srv.forward(b, x).clone()
    assert not torch.allclose(ya, yb)
    assert a.structure.active == b.key
    assert torch.equal(srv.forward(a, x), ya) and torch.equal(srv.forward(b, x), yb)
    # LoRA's split q/k/v are views of the base's fused qkv, not copies
    assert a.structure.aliased_views > 0


@pytest.mark.slow
@pytest.mark.parametrize("backbone", [TINY_VIT, TINY_CNN])
def test_no_copy_of_the_base_per_adapter(full_zoo, backbone):
    """What a structure holds privately is (about) what its adapter file holds: no frozen base tensor is
    duplicated; the server's adapters cost their own tensors only."""
    srv = server()
    for f in full_zoo[backbone]:
        s = srv.load(f)
        file_bytes = sum(t.numel() * t.element_size() for t in load_file(str(f / "adapter_model.safetensors")).values())
        # an adapter keeps exactly what its file holds (+ nothing of the base)
        assert s.bytes <= file_bytes + 4096, (s.config.method, s.bytes, file_bytes)
        # the structure's constants (tensors the method makes, e.g. BOFT's permutations) are no copy of the base
        base = s.base.model
        by_shape = {}
        for t in list(base.parameters()) + list(base.buffers()):
            by_shape.setdefault((t.dtype, t.device, tuple(t.shape[1:])), []).append(t.detach())
        assert all(base_chunk(c.detach(), by_shape) is None for c in s.structure.constants), s.config.method
    assert len(srv.bases) == 1 and srv.memory()["adapters"] == sum(s.bytes for s in srv.adapters.values())


def test_calibration_and_class_names_travel_with_each_adapter(tmp_path):
    a = make(tmp_path / "a", TINY_VIT, "bitfit", 1, temperature=2.0, names=["x", "y", "z"])
    b = make(tmp_path / "b", TINY_VIT, "bitfit", 2, temperature=None, names=["p", "q", "r"])
    pred = Predictor(pretrained=False, device="cpu")
    image = Image.new("RGB", (40, 40), (120, 30, 60))
    pa, pb = pred.predict(a, image), pred.predict(b, image)
    assert list(pa.probs) == ["x", "y", "z"] and list(pb.probs) == ["p", "q", "r"]
    assert pa.calibrated and not pb.calibrated
    assert pred.load(a).served.structure is pred.load(b).served.structure
    calibrated, _ = load_adapter(a)  # load_adapter alone applies T
    x, _ = pred._tensor(pred.load(a), image)
    with torch.no_grad():
        ref = torch.softmax(calibrated(x)[0], 0)
    assert list(pa.probs.values()) == pytest.approx(ref.tolist(), abs=1e-6)


def test_concurrent_requests_on_one_base_are_correct(zoo):
    pred = Predictor(pretrained=False, device="cpu")
    folders = zoo[TINY_VIT][:6] + zoo["lora"]
    image = Image.new("RGB", (48, 40), (20, 160, 90))
    expected = {str(f): pred.predict(f, image).probs for f in folders}
    errors = []

    def worker(i):
        for k in range(6):
            f = folders[(i + k) % len(folders)]
            got = pred.predict(f, image).probs
            if got != pytest.approx(expected[str(f)], abs=1e-6):
                errors.append((f.name, got))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_compare_preprocesses_once_and_reports_memory(zoo):
    pred = Predictor(pretrained=False, device="cpu")
    folders = zoo[TINY_VIT][:4]
    image = Image.new("RGB", (50, 50), (200, 10, 10))
    rows = pred.compare(folders, image)
    assert rows.preprocess_passes == 1 and len(rows) == 4
    assert all(r.error is None for r in rows)
    for f, r in zip(folders, rows):
        assert r.prediction.probs == pytest.approx(pred.predict(f, image).probs, abs=1e-6)
    assert isinstance(rows.memory_bytes, int)
    bad = pred.compare([folders[0], folders[0].parent / "missing"], image)
    assert bad[0].error is None and "not a MedPEFT adapter folder" in bad[1].error


def test_merged_copies_only_under_the_memory_budget(zoo):
    image = Image.new("RGB", (40, 40), (5, 90, 200))
    plain = Predictor(pretrained=False, device="cpu")
    merged = Predictor(pretrained=False, device="cpu", memory_mb=64)
    f = next(f for f in zoo[TINY_VIT] if f.name == "bitfit")
    assert not plain.load(f).merged and merged.load(f).merged
    assert merged.predict(f, image).probs == pytest.approx(plain.predict(f, image).probs, abs=1e-5)
    vpt = next(f for f in zoo[TINY_VIT] if f.name == "vpt_deep")
    assert not merged.load(vpt).merged and "cannot be merged" in merged.load(vpt).note
    tiny = Predictor(pretrained=False, device="cpu", memory_mb=1e-4)  # a budget smaller than one base
    assert not tiny.load(f).merged and "budget" in tiny.load(f).note


def test_gradcam_on_a_shared_structure(zoo):
    pred = Predictor(pretrained=False, device="cpu")
    image = Image.new("RGB", (40, 40), (30, 30, 30))
    a, b = zoo["lora"][:2]
    heat = pred.explain(a, image)
    assert heat.size[0] > 0
    pa = pred.predict(a, image).probs
    pred.explain(b, image)
    assert pred.predict(a, image).probs == pa  # Grad-CAM left no gradient or state behind


def test_an_adapter_written_again_is_reloaded(tmp_path):
    import os

    folder = make(tmp_path / "a", TINY_VIT, "ssf", 1)
    pred = Predictor(pretrained=False, device="cpu")
    image = Image.new("RGB", (40, 40), (70, 20, 220))
    old = pred.predict(folder, image).probs
    make(tmp_path / "a", TINY_VIT, "ssf", 2)  # retrained into the same folder
    weights = folder / "adapter_model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))  # a coarse file-system clock still sees it
    new = pred.predict(folder, image).probs
    fresh = Predictor(pretrained=False, device="cpu").predict(folder, image).probs
    assert new == pytest.approx(fresh, abs=1e-6) and new != pytest.approx(old, abs=1e-4)
    assert len(pred.server.adapters) == 1 and len(next(iter(pred.server.bases.values())).structures) == 1
