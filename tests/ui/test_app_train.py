"""The app's Train tab end to end through its API (gradio_client against a real server on
127.0.0.1): scikit-learn's real handwritten digits uploaded as a zip, the offline pretrained
EfficientNet-Lite0 fine-tuned with SSF, the adapter classifying on the Classify tab, guarded
uploads, dataset checks before training, Stop, one training at a time, quick HPO and a Hub push
to a local fake Hub."""
from __future__ import annotations

import shutil
import time
import zipfile
from pathlib import Path

import pytest

from adapters import OFFLINE_LITE0

from tests.helpers import start_app, write_digits

CLASSES = ["digit_0", "digit_1", "digit_2", "digit_3"]
TOKEN = "hf_train_tab_secret_token"
pytestmark = pytest.mark.slow  # real trainings through a running server


# ------------------------------------------------------------------------------------ helpers
def digits_folder(folder: Path, per_class: int = 8, short: dict[str, int] | None = None) -> Path:
    """Four classes of real handwritten digits (scikit-learn) as PNG folders; ``short`` trims classes."""
    write_digits(folder, per_class=per_class, size=32)
    for sub in folder.iterdir():
        if sub.name not in CLASSES:
            shutil.rmtree(sub)
    for name, keep in (short or {}).items():
        for extra in sorted((folder / name).glob("*.png"))[keep:]:
            extra.unlink()
    return folder


def zip_folder(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*.png")):
            zf.write(f, f.relative_to(folder.parent).as_posix())
    return dest


def train_args(zip_path: Path, *, epochs: int = 3, img: int = 64, hpo: bool = False, trials: int = 2,
               backbone: str = OFFLINE_LITE0, method: str = "ssf", name: str = "") -> tuple:
    from gradio_client import handle_file

    return (handle_file(str(zip_path)), "upload", "", backbone, method, hpo, trials, epochs, 16, 5e-3, img, name)


def summary_of(outputs: tuple) -> dict:
    return outputs[5]  # the Run details (JSON) output


def wait_for(job, predicate, timeout: float = 120.0):
    """The first streamed output tuple that satisfies ``predicate``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for out in job.outputs():
            if predicate(out):
                return out
        if job.done():
            break
        time.sleep(0.2)
    raise AssertionError(f"no streamed output matched within {timeout:.0f} s; status {job.status()}")


def no_stray_files(root: Path, name: str) -> list[Path]:
    return [p for p in root.rglob(name)]


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-tab")
    data = digits_folder(root / "src" / "digits")
    files = root / "files"
    files.mkdir()
    return {"root": root, "runs": root / "runs", "scratch": root / "scratch", "data": data, "files": files,
            "zip": zip_folder(data, files / "digits.zip")}


@pytest.fixture(scope="module")
def server(workspace):
    import app
    from tests.helpers.hubserver import FakeHub

    hub = FakeHub(token=TOKEN, user="tester").start()
    demo = app.build_app(workspace["runs"], hub_repos=[], create_demo=False, sd_base="",
                         examples_dir=workspace["root"] / "examples", train_dir=workspace["scratch"],
                         hub_endpoint=hub.url)
    url = start_app(demo)
    from gradio_client import Client

    yield {"demo": demo, "url": url, "client": Client(url, verbose=False), "state": demo.medpeft_state, "hub": hub}
    demo.close()
    hub.stop()


@pytest.fixture(scope="module")
def trained(server, workspace):
    """One real training run on the digits zip (offline pretrained EfficientNet-Lite0 + SSF, 64 px)."""
    t0 = time.monotonic()
    job = server["client"].submit(*train_args(workspace["zip"], name="digits"), api_name="/train")
    final = job.result(timeout=180)
    return {"job": job, "final": final, "summary": summary_of(final), "seconds": time.monotonic() - t0}


# ------------------------------------------------------------------------------------ tests
def test_train_on_uploaded_digits_zip(server, workspace, trained):
    final, summary = trained["final"], trained["summary"]
    assert "Training finished" in final[0] and "Traceback" not in final[0]
    # Test metrics and the confusion matrix, class names as in the zip's folders.
    assert summary["class_names"] == CLASSES
    test = summary["test"]
    assert 0.0 <= test["f1_macro"] <= 1.0 and 0.0 <= test["accuracy"] <= 1.0
    cm = summary["confusion_matrix"]
    assert len(cm) == len(CLASSES) and all(len(row) == len(CLASSES) for row in cm)
    assert sum(map(sum, cm)) == summary["split_sizes"]["test"] > 0
    assert summary["method"] == "ssf" and summary["backbone"] == OFFLINE_LITE0
    assert not summary["stopped_early_by_user"] and summary["epochs_run"] <= 3
    assert "macro-F1" in final[2] and "Test results" in final[2]
    assert final[3] is not None and final[3]["type"] == "matplotlib"  # the confusion matrix plot
    assert final[4] and Path(final[4]).is_file()  # the reliability diagram (raw and calibrated)
    assert "Calibration" in final[2] and "ECE" in final[2]
    # Live updates: a curve per epoch while it trained.
    curves = [out for out in trained["job"].outputs() if out[1] is not None and "epoch" in out[0]]
    assert curves, "no per-epoch curve was streamed"
    # The adapter is in the store, under <adapters_dir>/trained, and selected on the Classify tab.
    run_dir = Path(summary["run_dir"])
    assert run_dir.parent == workspace["runs"] / "trained" and run_dir.name.startswith("digits-")
    assert (Path(summary["adapter_dir"]) / "adapter_model.safetensors").is_file()
    assert (run_dir / "results.json").is_file()
    key = summary["adapter_key"]
    assert key == f"trained/{run_dir.name}/seed_0/adapter"
    adapter_update = final[9]
    assert adapter_update["value"] == key and key in [v for _, v in adapter_update["choices"]]
    listed = {a["key"]: a for a in server["client"].predict(api_name="/adapters")}
    assert listed[key]["class_names"] == CLASSES and listed[key]["method"] == "ssf"
    # The upload's scratch folder is gone.
    assert not [p for p in workspace["scratch"].rglob("*") if p.is_file()]


def test_new_adapter_classifies_a_digit(server, workspace, trained):
    from gradio_client import handle_file

    key = trained["summary"]["adapter_key"]
    image = sorted((workspace["data"] / "digit_2").glob("*.png"))[0]
    label, seen, heat, details = server["client"].predict(handle_file(str(image)), key, True, api_name="/classify")
    probs = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert set(probs) == set(CLASSES)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
    assert label["label"] in CLASSES and "ssf" in details


@pytest.mark.parametrize("kind", ["traversal", "bomb"])
def test_malicious_zips_are_refused_with_plain_messages(server, workspace, kind):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    bad = workspace["files"] / f"{kind}.zip"
    with zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(6):
            zf.write(sorted((workspace["data"] / "digit_0").glob("*.png"))[i], f"data/a/{i}.png")
            zf.write(sorted((workspace["data"] / "digit_1").glob("*.png"))[i], f"data/b/{i}.png")
        if kind == "traversal":
            zf.writestr("../evil.png", b"not really a png")
            zf.writestr("data/../../../evil2.png", b"nor this")
        else:
            zf.writestr("data/a/zeros.png", b"\0" * 50_000_000)  # ~50 MB of zeros, ~50 KB zipped
    expected = "escapes its folder" if kind == "traversal" else "zip bomb"
    runs_before = set((workspace["runs"] / "trained").glob("*")) if (workspace["runs"] / "trained").exists() else set()
    client = server["client"]
    for api, args in (("/check_dataset", (handle_file(str(bad)), "upload", "")),
                      ("/train", train_args(bad, epochs=1))):
        with pytest.raises(AppError) as err:
            client.predict(*args, api_name=api)
        msg = str(err.value)
        assert expected in msg and "refused" in msg, (api, msg)
        assert "Traceback" not in msg and 'File "' not in msg, msg
    # Nothing escaped the extraction folder, nothing was left in it, no run was started.
    for name in ("evil.png", "evil2.png", "zeros.png"):
        assert not no_stray_files(workspace["root"], name), name
        assert not Path("/tmp", name).exists()
    assert not [p for p in workspace["scratch"].rglob("*") if p.is_file()]
    runs_after = set((workspace["runs"] / "trained").glob("*")) if (workspace["runs"] / "trained").exists() else set()
    assert runs_after == runs_before


def test_class_with_too_few_images_is_refused_before_training(server, workspace):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    data = digits_folder(workspace["root"] / "few" / "digits", short={"digit_3": 2})
    few = zip_folder(data, workspace["files"] / "few.zip")
    client = server["client"]
    report = client.predict(handle_file(str(few)), "upload", "", api_name="/check_dataset")
    assert "Cannot train" in report and "digit_3 has 2" in report
    t0 = time.monotonic()
    with pytest.raises(AppError) as err:
        client.predict(*train_args(few), api_name="/train")
    assert "digit_3 has 2" in str(err.value) and "Traceback" not in str(err.value)
    assert time.monotonic() - t0 < 15  # refused up front, not after training
    ok = client.predict(handle_file(str(workspace["zip"])), "upload", "", api_name="/check_dataset")
    assert "Ready to train" in ok and "digit_0 (8)" in ok


def test_registered_dataset_on_disk(server, workspace, monkeypatch):
    from gradio_client.exceptions import AppError

    client = server["client"]
    ok = client.predict(None, "imagefolder", str(workspace["data"]), api_name="/check_dataset")
    assert "Ready to train" in ok and "4 classes, 32 images" in ok
    for dataset, folder, expected in (("imagefolder", "", "enter the folder"),
                                      ("ham10000", str(workspace["root"] / "nowhere"), "not a folder"),
                                      ("no_such_dataset", str(workspace["data"]), "not in the list of choices")):
        with pytest.raises(AppError) as err:
            client.predict(None, dataset, folder, api_name="/check_dataset")
        assert expected in str(err.value), str(err.value)
    state = server["state"]  # the settings are read once (MEDPEFT_DATA_ROOTS); change them on the running app
    monkeypatch.setattr(state, "settings", state.settings.replace(data_roots=(str(workspace["root"] / "elsewhere"),)))
    with pytest.raises(AppError, match="outside the folders"):
        client.predict(None, "imagefolder", str(workspace["data"]), api_name="/check_dataset")


def test_stop_keeps_the_best_checkpoint_and_trainings_queue(server, workspace):
    """Stop after the first epoch: the best checkpoint so far is tested and saved. Meanwhile a second
    training from another client waits in the queue (one training per server)."""
    from gradio_client import Client
    from gradio_client.utils import Status

    client = server["client"]
    job = client.submit(*train_args(workspace["zip"], epochs=40, name="long"), api_name="/train")
    wait_for(job, lambda out: out[1] is not None)  # the first epoch's curve
    other = Client(server["url"], verbose=False)
    queued = other.submit(*train_args(workspace["zip"], epochs=1, name="second", method="adaptformer"),
                          api_name="/train")  # a ViT-only method on a CNN: refused as soon as it starts
    t0 = time.monotonic()
    while queued.status().code != Status.IN_QUEUE and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    assert queued.status().code == Status.IN_QUEUE  # waits for the running training
    assert other.predict(api_name="/stop_training") == "No training is running in this session."
    assert "Stopping" in client.predict(api_name="/stop_training")
    final = job.result(timeout=120)
    summary = summary_of(final)
    assert summary["stopped_early_by_user"] is True and "Stopped" in final[0]
    assert summary["epochs_run"] < 40
    assert (Path(summary["adapter_dir"]) / "adapter_model.safetensors").is_file()
    assert summary["adapter_key"] in {a["key"] for a in client.predict(api_name="/adapters")}
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="not a PEFT method"):  # the queued one ran only after
        queued.result(timeout=60)


def test_quick_hpo_then_final_training(server, workspace):
    job = server["client"].submit(*train_args(workspace["zip"], epochs=1, img=32, hpo=True, trials=2, name="hpo"),
                                  api_name="/train")
    final = job.result(timeout=180)
    summary = summary_of(final)
    hpo = summary["quick_hpo"]
    assert 1 <= len(hpo["trials"]) <= 2 and hpo["trial_epochs"] == 1
    assert hpo["best"]["lr"] > 0 and 0 <= hpo["best"]["val"] <= 1
    assert any("Quick HPO: trial" in out[0] for out in job.outputs())
    assert "Quick HPO" in final[2]
    # Trials ran in the scratch folder: only the final run is in the store.
    run_dir = Path(summary["run_dir"])
    assert run_dir.parent == workspace["runs"] / "trained"
    assert not list(run_dir.glob("trial_*")) and not [p for p in workspace["scratch"].rglob("*") if p.is_file()]
    keys = [a["key"] for a in server["client"].predict(api_name="/adapters") if a["key"].startswith(
        f"trained/{run_dir.name}")]
    assert keys == [summary["adapter_key"]]


def test_method_list_follows_the_backbone_family(server):
    client = server["client"]
    vit = client.predict("vit_small_patch16_224.augreg_in21k_ft_in1k", api_name="/methods_for_backbone")
    cnn = client.predict(OFFLINE_LITE0, api_name="/methods_for_backbone")
    vit_methods, cnn_methods = [v for _, v in vit["choices"]], [v for _, v in cnn["choices"]]
    assert vit["value"] == "lora" and {"adaptformer", "vpt_deep", "layernorm"} <= set(vit_methods)
    assert cnn["value"] == "ssf" and {"batchnorm", "tsa"} <= set(cnn_methods) and "adaptformer" not in cnn_methods


def test_push_to_hub_uses_the_token_once(server, trained):
    from gradio_client.exceptions import AppError

    client, hub = server["client"], server["hub"]
    key = trained["summary"]["adapter_key"]
    msg = client.predict(key, "tester/digits-ssf", TOKEN, True, api_name="/push_adapter")
    assert "Pushed" in msg and "tester/digits-ssf" in msg and TOKEN not in msg
    files = hub.repos["tester/digits-ssf"]
    assert files["private"] is True
    for bad_token, expected in (("hf_wrong_token", ""), ("", "paste a Hugging Face token")):
        with pytest.raises(AppError) as err:
            client.predict(key, "tester/digits-ssf-2", bad_token, True, api_name="/push_adapter")
        text = str(err.value)
        assert expected in text and "Traceback" not in text
        assert not bad_token or bad_token not in text
    with pytest.raises(AppError, match="repo id"):
        client.predict(key, " ", TOKEN, True, api_name="/push_adapter")
