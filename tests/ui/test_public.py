"""The app as a public, multi-visitor service: two visitors (two gradio_client sessions) against an
app in public mode on a real server. Each visitor's adapters are theirs (listing, classify, compare,
download), server folders are confined to the data roots with one-line refusals naming no path,
outputs name no server path, private data and Gradio's temp files expire, Gradio keeps the state of
a bounded number of sessions, and GPU work goes through spaces.GPU on a Space."""
from __future__ import annotations

import importlib
import json
import os
import sys
import time
import types
import zipfile
from pathlib import Path

import gradio as gr
import pytest

from tests.helpers import make_adapter, retina_png, start_app, write_digits
from trainer.jobs.private import PrivateStore, owner_id

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from ui import Settings, build_app  # noqa: E402
from ui.visitors import ABS_PATH  # noqa: E402


def public_settings(root: Path, **overrides) -> Settings:
    values = dict(adapters_dir=root / "runs", public=True, data_roots=(str(root / "roots"),),
                  private_dir=root / "private", examples_dir=root / "examples", train_dir=root / "scratch",
                  create_demo=False)
    values.update(overrides)
    return Settings.from_env(environ={}, **values)


def strings(obj):
    """Every string inside a (JSON-like) output."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from strings(v)


def assert_no_server_path(obj, root: Path):
    for s in strings(obj):
        assert str(root) not in s, s
        assert not ABS_PATH.search(s), s


def private_adapter(state, client: Client, name: str = "mine-20260101", seed: int = 7) -> str:
    """An adapter in ``client``'s private folder, as the Train tab leaves one; returns its key."""
    folder = state.private.trained_dir(owner_id(None, client.session_hash)) / name / "seed_0" / "adapter"
    make_adapter(folder, classes=["cyst", "solid"], seed=seed)
    return f"private:{name}/seed_0/adapter"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("public")
    make_adapter(root / "runs" / "operator" / "bitfit" / "adapter", f1=0.7)
    write_digits(root / "roots" / "digits", per_class=6, size=16)
    secret = write_digits(root / "secret" / "study", per_class=6, size=16)
    (root / "roots" / "escape").symlink_to(secret, target_is_directory=True)
    img = retina_png(root / "retina.png", 64)
    demo = build_app(public_settings(root))
    url = start_app(demo)
    yield {"root": root, "demo": demo, "state": demo.medpeft_state, "url": url, "img": str(img)}
    demo.close()


@pytest.fixture(scope="module")
def visitors(world):
    return Client(world["url"], verbose=False), Client(world["url"], verbose=False)


def keys_of(client: Client) -> list[str]:
    return [a["key"] for a in client.predict(api_name="/adapters")]


# ------------------------------------------------------------------------------------ mode
def test_public_mode_is_decided_by_space_host_or_flag():
    assert not Settings.from_env(environ={}).is_public
    assert Settings.from_env(environ={"SPACE_ID": "me/medpeft"}).is_public
    assert Settings.from_env(environ={"GRADIO_SERVER_NAME": "0.0.0.0"}).is_public
    assert not Settings.from_env(environ={"GRADIO_SERVER_NAME": "localhost"}).is_public
    assert Settings.from_env(environ={"MEDPEFT_PUBLIC": "1"}).is_public
    assert not Settings.from_env(environ={"SPACE_ID": "me/x", "MEDPEFT_PUBLIC": "0"}).is_public
    s = Settings.from_env(environ={"MEDPEFT_PRIVATE_TTL": "60", "MEDPEFT_CACHE_TTL": "5"})
    assert (s.private_ttl, s.cache_ttl) == (60.0, 5.0)


def test_about_tab_names_the_mode(world, tmp_path):
    assert "Mode: public" in world["demo"].medpeft_tabs["about"].mode_md.value
    assert "deleted 24 hours after" in world["demo"].medpeft_tabs["about"].mode_md.value
    local = build_app(Settings.from_env(environ={}, adapters_dir=tmp_path, create_demo=False))
    assert "Mode: local" in local.medpeft_tabs["about"].mode_md.value


# ------------------------------------------------------------------------------------ visitors
def test_each_visitor_lists_only_their_own_and_the_operators_adapters(world, visitors):
    a, b = visitors
    key = private_adapter(world["state"], a)
    ka, kb = keys_of(a), keys_of(b)
    assert key in ka and "operator/bitfit/adapter" in ka
    assert key not in kb and "operator/bitfit/adapter" in kb
    listing = b.predict(api_name="/adapters")
    assert "cyst" not in json.dumps(listing)  # not even A's class names
    # The page's own adapter pickers (the load event) follow the same rule.
    dataset, adapter_dd, compare, gen, status = b.predict("All", "All", None, api_name="/current_adapters")
    assert key not in json.dumps([dataset, adapter_dd, compare, gen])
    assert_no_server_path([a.predict(api_name="/adapters"), status], world["root"])


def test_another_visitor_cannot_classify_compare_or_download(world, visitors):
    a, b = visitors
    key = private_adapter(world["state"], a)
    label, *_, details = a.predict(handle_file(world["img"]), key, False, api_name="/classify")
    assert {c["label"] for c in label["confidences"]} == {"cyst", "solid"}
    assert_no_server_path(details, world["root"])
    for call in (lambda: b.predict(handle_file(world["img"]), key, False, api_name="/classify"),
                 lambda: b.predict(key, api_name="/download_adapter")):
        with pytest.raises(AppError) as e:
            call()
        assert "cyst" not in str(e.value) and str(world["root"]) not in str(e.value)
    try:  # compare: refused, or a row that says the adapter is unknown (never A's prediction)
        table = b.predict(handle_file(world["img"]), [key], api_name="/compare")
        assert "unknown adapter" in json.dumps(table) and "cyst" not in json.dumps(table)
    except AppError as e:
        assert "cyst" not in str(e)
    zipped = a.predict(key, api_name="/download_adapter")
    with zipfile.ZipFile(zipped) as zf:
        assert {"medpeft.json", "adapter_model.safetensors"} <= set(zf.namelist())
    with pytest.raises(AppError, match="not one of your adapters"):  # the operator's are not a visitor's to push
        a.predict("operator/bitfit/adapter", api_name="/download_adapter")


def test_gradio_file_routes_serve_no_private_or_server_file(world, visitors):
    import httpx

    a, _ = visitors
    private_adapter(world["state"], a, name="routes-20260101")
    private = next(world["state"].private.root.rglob("adapter_model.safetensors"))
    for path in (private, world["root"] / "runs" / "operator" / "bitfit" / "adapter" / "medpeft.json",
                 world["root"] / "secret" / "study"):
        r = httpx.get(world["url"] + f"gradio_api/file={path}")
        assert r.status_code in (403, 404), path


@pytest.mark.slow  # a real (tiny) training through the running server
def test_a_visitors_training_is_private_and_names_no_server_path(world, visitors, tmp_path):
    from adapters import OFFLINE_LITE0

    a, b = visitors
    data = write_digits(tmp_path / "digits", per_class=6, size=16)
    zpath = tmp_path / "mydata.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(data.rglob("*.png")):
            zf.write(f, f.relative_to(data.parent).as_posix())
    out = a.predict(handle_file(str(zpath)), "upload", "", OFFLINE_LITE0, "ssf", False, 2, 1, 8, 5e-3, 32, "",
                    api_name="/train")
    status, _, metrics, _, _, summary = out[:6]
    key = summary["adapter_key"]
    assert key.startswith("private:mydata") and "deleted 24 hours after training" in metrics
    assert_no_server_path([status, metrics, summary, out[6:]], world["root"])
    assert key in keys_of(a) and key not in keys_of(b)
    with pytest.raises(AppError):
        b.predict(handle_file(world["img"]), key, False, api_name="/classify")
    assert not list((world["root"] / "runs").rglob("mydata*"))  # not in the operator's folder


# ------------------------------------------------------------------------------------ server folders
@pytest.mark.parametrize("data_dir", ["{root}/secret/study", "/", "{root}/roots/../secret/study", "escape",
                                      "{root}/roots/escape", "../secret/study"])
def test_server_folders_outside_the_roots_are_refused_in_one_line(world, visitors, data_dir):
    _, b = visitors
    with pytest.raises(AppError) as e:
        b.predict(None, "imagefolder", data_dir.format(root=world["root"]), api_name="/check_dataset")
    msg = str(e.value)
    assert "\n" not in msg.strip()
    assert "/" not in msg.replace("/tmp/gradio", "") and "study" not in msg and "digit_" not in msg, msg


def test_a_folder_under_the_roots_is_read(world, visitors):
    _, b = visitors
    assert "Ready to train" in b.predict(None, "imagefolder", "digits", api_name="/check_dataset")


def test_without_roots_only_uploads_are_offered(tmp_path):
    demo = build_app(public_settings(tmp_path, data_roots=()))
    train = demo.medpeft_tabs["train"]
    assert [v for _, v in train.source_dd.choices] == ["upload"]
    with pytest.raises(gr.Error, match="only on uploaded zips") as e:
        train.check_dataset(None, "imagefolder", "/")
    assert "/" not in str(e.value.message)


# ------------------------------------------------------------------------------------ expiry, capacity
def test_private_data_is_deleted_after_the_ttl(tmp_path):
    store = PrivateStore(tmp_path / "private", ttl=60)
    old = make_adapter(store.trained_dir("s-old") / "run-a" / "seed_0" / "adapter")
    new = make_adapter(store.trained_dir("s-new") / "run-b" / "seed_0" / "adapter")
    past = time.time() - 120
    for p in [old, *old.rglob("*"), old.parent, old.parent.parent]:
        os.utime(p, (past, past))
    assert store.sweep() == 1
    from trainer.jobs.private import duration_text

    assert [duration_text(t) for t in (86400, 120, 1)] == ["24 hours", "2 minutes", "1 second"]
    assert not (tmp_path / "private" / "s-old").exists() and new.is_dir()


@pytest.mark.slow  # waits for the TTL sweep
def test_private_adapter_disappears_from_the_app_after_a_tiny_ttl(tmp_path):
    demo = build_app(public_settings(tmp_path, private_ttl=5))  # room for a loaded machine to list it first
    url = start_app(demo)
    try:
        a = Client(url, verbose=False)
        key = private_adapter(demo.medpeft_state, a)
        assert key in keys_of(a)
        deadline = time.time() + 30
        while key in keys_of(a) and time.time() < deadline:
            time.sleep(0.5)
        assert key not in keys_of(a)
        with pytest.raises(AppError, match="kept 5 seconds and only for the visitor who trained them"):
            a.predict(handle_file(str(retina_png(tmp_path / "r.png", 64))), key, False, api_name="/classify")
    finally:
        demo.close()


@pytest.mark.slow  # waits for Gradio's cache sweep
def test_temp_files_are_deleted_after_the_cache_ttl_and_state_is_bounded(tmp_path):
    from ui.loadtest import App, drive, example_image

    make_adapter(tmp_path / "runs" / "operator" / "bitfit" / "adapter")
    demo = build_app(public_settings(tmp_path, cache_ttl=2, state_capacity=3))
    url = start_app(demo)
    try:
        app = App(url)
        import httpx

        with httpx.Client() as http:
            f = app.upload(http, "retina.png", example_image())
            out = app.call(http, "s1", "classify", [f, "operator/bitfit/adapter", True])
        served = [Path(o["path"]) for o in out[1:3]]
        assert all(p.is_file() for p in served)
        res = drive(app, 6, 2, example_image(), ["current_adapters", "adapters"])
        assert not res["errors"]
        assert len(demo.state_holder.session_data) <= 3
        deadline = time.time() + 20
        while any(p.exists() for p in served) and time.time() < deadline:
            time.sleep(0.5)
        assert not any(p.exists() for p in served)
        # A visitor whose state was dropped still gets right answers (inputs travel with each call).
        with httpx.Client() as http:
            f = app.upload(http, "retina.png", example_image())
            label = app.call(http, "s1", "classify", [f, "operator/bitfit/adapter", False])[0]
        assert {c["label"] for c in label["confidences"]} == {"benign", "malignant", "normal"}
    finally:
        demo.close()


def test_loadtest_short_run(world, tmp_path):
    from ui import loadtest

    out = tmp_path / "lt.json"
    code = loadtest.main(["--url", world["url"], "--sessions", "4", "--warmup", "1", "--concurrency", "2",
                          "--pid", str(os.getpid()), "--no-baseline", "--temp-dir", str(tmp_path),
                          "--max-growth-mb", "500", "--json", str(out)])
    r = json.loads(out.read_text())
    assert code == 0 and r["errors"]["other"] == 0, r["errors"]
    assert {"current_adapters", "adapters", "classify", "classify_gradcam", "compare"} <= set(r["latency_ms"])
    assert r["latency_ms"]["p95"] >= r["latency_ms"]["p50"] > 0 and "per_session" in r["rss_mb"]


def test_loadtest_finds_the_process_listening_on_a_local_port():
    import socket

    from ui import loadtest

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert loadtest.find_server_pid(f"http://127.0.0.1:{port}/") == os.getpid()
    assert loadtest.find_server_pid(f"http://127.0.0.1:{port}/") is None  # nothing listens there now
    assert loadtest.find_server_pid("https://example.org/") is None  # not this machine: not looked up


# ------------------------------------------------------------------------------------ ZeroGPU
@pytest.fixture
def fake_space(monkeypatch):
    """A Space with a stand-in ``spaces`` package that records what spaces.GPU wraps."""
    calls = []
    fake = types.ModuleType("spaces")

    def GPU(duration=None):
        def deco(fn):
            def run(*args, **kwargs):
                d = duration(*args, **kwargs) if callable(duration) else duration
                calls.append((fn.__name__, d))
                return fn(*args, **kwargs)
            return run
        return deco

    fake.GPU = GPU
    monkeypatch.setitem(sys.modules, "spaces", fake)
    monkeypatch.setenv("SPACE_ID", "me/medpeft")
    from trainer.jobs import zerogpu

    importlib.reload(zerogpu)
    yield calls
    monkeypatch.delenv("SPACE_ID")
    monkeypatch.delitem(sys.modules, "spaces")
    importlib.reload(zerogpu)


def test_gpu_work_runs_under_spaces_gpu_on_a_space(fake_space, tmp_path):
    from PIL import Image

    from trainer.infer import Predictor
    from trainer.infer.store import find_adapters
    from trainer.jobs import zerogpu

    make_adapter(tmp_path / "a" / "adapter")
    (adapter,) = find_adapters(tmp_path)
    pid = zerogpu.register(Predictor(pretrained=False))
    pred, heat = zerogpu.classify(pid, adapter, Image.new("RGB", (64, 64)), True)
    assert heat is not None and ("classify", zerogpu.CLASSIFY_S) in fake_space
    zerogpu.compare(pid, [adapter, adapter], Image.new("RGB", (64, 64)))
    assert fake_space[-1] == ("compare", 30)
    assert zerogpu.generate_seconds(0, "p", "b", None, 50) == 95


def test_jobs_longer_than_zerogpu_allows_are_refused_naming_the_limit():
    from trainer.config import ConfigError
    from trainer.jobs import zerogpu

    short = zerogpu.estimate_train_seconds(40, 2, img_size=64)
    long = zerogpu.estimate_train_seconds(20_000, 50, trials=5, family="vit")
    assert short < 120 < long
    zerogpu.check_fits(short, 120)
    with pytest.raises(ConfigError, match="120 s ZeroGPU allows"):
        zerogpu.check_fits(long, 120)


def test_space_config_suggests_zerogpu_and_preloads_the_sd_base():
    import yaml

    root = Path(__file__).resolve().parents[2] / "spaces_config"
    meta = yaml.safe_load((root / "README.md").read_text().split("---")[1])
    assert meta["suggested_hardware"] == "zero-a10g" and meta["hf_oauth"] is True
    assert any(line.startswith("spaces==") for line in (root / "requirements.txt").read_text().splitlines())
    sys.path.insert(0, str(root))
    try:
        from deploy import space_card
    finally:
        sys.path.remove(str(root))
    card = space_card((root / "README.md").read_text(), "org/sd-cxr")
    assert "org/sd-cxr" in yaml.safe_load(card.split("---")[1])["preload_from_hub"]
    assert space_card(card, "/local/pipeline") == card


@pytest.mark.slow  # a Train job through the API
def test_a_train_job_over_the_zerogpu_limit_is_refused_through_the_api(tmp_path, monkeypatch):
    monkeypatch.setenv("SPACE_ID", "me/medpeft")  # on a Space (no spaces package here: the limit still holds)
    demo = build_app(public_settings(tmp_path, gpu_max_s=5))
    url = start_app(demo)
    try:
        data = write_digits(tmp_path / "digits", per_class=6, size=16)
        zpath = tmp_path / "d.zip"
        with zipfile.ZipFile(zpath, "w") as zf:
            for f in sorted(data.rglob("*.png")):
                zf.write(f, f.relative_to(data.parent).as_posix())
        with pytest.raises(AppError, match="more than the 5 s ZeroGPU allows per job"):
            Client(url, verbose=False).predict(handle_file(str(zpath)), "upload", "", "", "ssf", False, 2, 50, 8,
                                               5e-3, 64, "", api_name="/train")
        assert not list(demo.medpeft_state.private.root.rglob("medpeft.json"))  # nothing trained
    finally:
        demo.close()


def test_train_jobs_on_zerogpu_stream_from_one_gpu_call(fake_space):
    from trainer.jobs import zerogpu

    class Job:
        def start(self):
            return self

        def events(self):
            yield {"kind": "epoch", "epoch": 1}
            yield {"kind": "done", "results": {"ok": True}}

    job = zerogpu.ZeroGPUJob(Job, 90).start()
    assert [e["kind"] for e in job.events()] == ["epoch", "done"] and job.results == {"ok": True}
    assert ("train_events", 90) in fake_space
    assert list(job.events()) == []  # the stream runs once (a drain after a lost client ends at once)


@pytest.mark.slow  # starts `python app.py` as a Space would
def test_app_started_as_on_a_space_is_public(tmp_path):
    import subprocess

    from tests.helpers import free_port

    port = free_port()
    env = {**os.environ, "SPACE_ID": "me/medpeft", "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": str(port),
           "MEDPEFT_ADAPTERS_DIR": str(tmp_path / "runs"), "MEDPEFT_STATE_CAPACITY": "2",
           "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url, deadline = f"http://127.0.0.1:{port}/", time.time() + 180
        while time.time() < deadline:
            try:
                a, b = Client(url, verbose=False), Client(url, verbose=False)
                break
            except Exception:
                time.sleep(1)
        listing = a.predict(api_name="/adapters")
        assert [r["key"] for r in listing] == ["demo-imagenet-lite0"]
        with pytest.raises(AppError, match="only on uploaded zips"):
            b.predict(None, "imagefolder", "/", api_name="/check_dataset")
        out = b.predict("All", "All", None, api_name="/current_adapters")
        assert str(tmp_path) not in json.dumps(out, default=str)
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.slow  # an app + a fake Hub on ports
def test_a_hub_pull_is_listed_for_the_visitor_who_pulled_it_only(tmp_path):
    import uuid

    from tests.helpers.hubserver import FakeHub
    from trainer.hub import push_adapter

    hub = FakeHub(token="hf_test", user="tester").start()
    repo = f"tester/pulled-{uuid.uuid4().hex[:8]}"
    push_adapter(make_adapter(tmp_path / "to-push", method="ssf", dataset="ham10000"), repo, private=False,
                 token="hf_test", endpoint=hub.url)
    make_adapter(tmp_path / "runs" / "operator" / "bitfit" / "adapter")
    demo = build_app(public_settings(tmp_path, hub_endpoint=hub.url))
    url = start_app(demo)
    try:
        a, b = Client(url, verbose=False), Client(url, verbose=False)
        a.predict(repo, "All", "All", api_name="/pull_hub_adapter")

        def pulled(client):
            return [r for r in client.predict(api_name="/adapters") if r["key"] == f"hub:{repo}" and r["source"] == "hub"]

        assert len(pulled(a)) == 1 and pulled(b) == []
        image = handle_file(str(retina_png(tmp_path / "r.png", 64)))
        label, *_ = a.predict(image, f"hub:{repo}", False, api_name="/classify")
        assert sum(c["confidence"] for c in label["confidences"]) == pytest.approx(1.0, abs=1e-3)
        with pytest.raises(AppError):  # B never pulled it: not among B's adapters
            b.predict(image, f"hub:{repo}", False, api_name="/classify")
    finally:
        demo.close()
        hub.stop()
