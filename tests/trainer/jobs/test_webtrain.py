"""The Train tab's backend: guarded zip extraction, dataset checks, a background job with live
progress and a Stop that keeps the best checkpoint."""
from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from adapters.backbones import TINY_CNN
from trainer.config import TrainConfig
from trainer.jobs.webtrain import TrainingJob, UploadError, check_dataset, dataset_root, safe_extract_zip

from tests.helpers import write_digits


def _zip(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_good_zip_extracts_and_finds_the_class_folders(tmp_path):
    z = _zip(tmp_path / "d.zip", {f"mydata/{c}/{i}.png": _png() for c in ("a", "b") for i in range(5)}
             | {"__MACOSX/._junk": b"x"})
    out = safe_extract_zip(z, tmp_path / "out")
    root = dataset_root(out)
    assert sorted(p.name for p in root.iterdir()) == ["a", "b"]
    check = check_dataset(root)
    assert check.ok and check.class_counts == {"a": 5, "b": 5}


@pytest.mark.parametrize("name", ["../evil.png", "a/../../evil.png", "/abs/evil.png", "C:/evil.png"])
def test_path_traversal_is_refused_and_nothing_written(tmp_path, name):
    z = _zip(tmp_path / "d.zip", {"ok/a/1.png": _png(), name: _png()})
    with pytest.raises(UploadError, match="refused"):
        safe_extract_zip(z, tmp_path / "out" / "x")
    assert not (tmp_path / "out" / "evil.png").exists() and not (tmp_path / "evil.png").exists()
    assert not (tmp_path / "out" / "x").exists()


def test_symlink_is_refused(tmp_path):
    z = _zip(tmp_path / "d.zip", {"a/1.png": _png()}, link="a/link.png")
    with pytest.raises(UploadError, match="symbolic link"):
        safe_extract_zip(z, tmp_path / "out")


def test_zip_bomb_is_refused(tmp_path):
    z = _zip(tmp_path / "bomb.zip", {"a/zeros.png": b"\0" * 50_000_000})  # ~50 MB of zeros, ~50 KB zipped
    with pytest.raises(UploadError, match="zip bomb"):
        safe_extract_zip(z, tmp_path / "out")
    with pytest.raises(UploadError, match="would unpack to"):
        safe_extract_zip(z, tmp_path / "out2", max_total_bytes=10_000_000)
    assert not (tmp_path / "out").exists()


def test_lying_header_is_caught_while_inflating(tmp_path):
    """A member whose header declares fewer bytes than its data inflates to."""
    z = tmp_path / "liar.zip"
    _zip(z, {"a/1.png": b"A" * 5000})
    raw = bytearray(z.read_bytes())
    # Patch the declared uncompressed size (local header offset 22, central directory entry offset 24).
    cd = raw.rfind(b"PK\x01\x02")
    raw[22:26] = (10).to_bytes(4, "little")
    raw[cd + 24:cd + 28] = (10).to_bytes(4, "little")
    z.write_bytes(bytes(raw))
    with pytest.raises((UploadError, zipfile.BadZipFile)):
        safe_extract_zip(z, tmp_path / "out")


def test_not_a_zip(tmp_path):
    bad = tmp_path / "x.zip"
    bad.write_text("hello")
    with pytest.raises(UploadError, match="not a readable zip"):
        safe_extract_zip(bad, tmp_path / "out")


def test_too_few_images_are_reported_before_training(tmp_path):
    for c, n in (("a", 6), ("b", 2)):
        for i in range(n):
            p = tmp_path / "d" / c / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(_png())
    check = check_dataset(tmp_path / "d")
    assert not check.ok and "b has 2" in check.summary()


def _cfg(data: Path, out: Path, epochs: int) -> TrainConfig:
    return TrainConfig(method="bitfit", dataset="imagefolder", data_dir=str(data), backbone=TINY_CNN,
                       pretrained=False, epochs=epochs, batch_size=16, lr=0.01, num_workers=0,
                       output_dir=str(out)).validate()


def test_job_streams_epochs_and_finishes(tmp_path):
    data = write_digits(tmp_path / "digits", per_class=6, size=32)
    job = TrainingJob(_cfg(data, tmp_path / "run", epochs=2)).start()
    events = [e for e in job.events() if e["kind"] not in ("tick", "step")]
    assert [e["kind"] for e in events] == ["epoch", "epoch", "done"], events
    assert "val" in events[0] and "train_loss" in events[0]
    assert (tmp_path / "run" / "results.json").is_file()


def test_stop_keeps_the_best_checkpoint_so_far(tmp_path):
    data = write_digits(tmp_path / "digits", per_class=6, size=32)
    job = TrainingJob(_cfg(data, tmp_path / "run", epochs=50)).start()
    seen = 0
    for event in job.events():
        if event["kind"] == "epoch":
            seen += 1
            if seen == 2:
                job.stop()
        if event["kind"] in ("done", "error"):
            break
    assert event["kind"] == "done", event
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["per_seed"][0]["epochs_run"] <= 3  # stopped, not 50 epochs
    assert results["stopped_early_by_user"] is True
    assert (tmp_path / "run" / results["adapter_dir"] / "adapter_model.safetensors").is_file()


def test_stop_before_the_first_step_still_saves_a_tested_adapter(tmp_path):
    data = write_digits(tmp_path / "digits", per_class=6, size=32)
    job = TrainingJob(_cfg(data, tmp_path / "run", epochs=50))
    job.stop()  # pressed before training even started
    job.start()
    kinds = [e["kind"] for e in job.events() if e["kind"] in ("epoch", "done", "error")]
    assert kinds == ["epoch", "done"], kinds
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["per_seed"][0]["epochs_run"] == 1 and results["stopped_early_by_user"]
