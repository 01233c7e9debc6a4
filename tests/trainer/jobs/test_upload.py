"""The Train tab's data: guarded zip extraction, the class folder, dataset checks before training
(uploads and registered datasets, with the server's allowed folders)."""
from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from trainer.data import DataError
from trainer.jobs.upload import UPLOAD, UploadError, check_dataset, dataset_root, resolve_dataset, safe_extract_zip

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


def _classes(root: Path, counts: dict[str, int]) -> Path:
    for c, n in counts.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / c / f"{i}.png").write_bytes(_png())
    return root


def test_resolve_dataset_upload_and_registered_folder(tmp_path):
    z = _zip(tmp_path / "d.zip", {f"wrap/{c}/{i}.png": _png() for c in ("a", "b") for i in range(5)})
    name, root, check = resolve_dataset(z, UPLOAD, None, tmp_path / "work")
    assert name == "imagefolder" and root == (tmp_path / "work" / "upload" / "wrap").resolve() and check.ok
    assert check.class_counts == {"a": 5, "b": 5}
    data = _classes(tmp_path / "server" / "data", {"x": 5, "y": 3})
    name, root, check = resolve_dataset(None, "imagefolder", str(data), tmp_path / "w2")
    assert (name, root) == ("imagefolder", data) and not check.ok and "y has 3" in check.summary()
    assert not (tmp_path / "w2").exists()  # a registered dataset is read in place


@pytest.mark.parametrize("zip_file, dataset, data_dir, expected", [
    (None, UPLOAD, None, "upload a zip"),
    ("images.tar", UPLOAD, None, "not a .zip file"),
    (None, "no_such_dataset", "/tmp", "unknown dataset"),
    (None, "imagefolder", " ", "enter the folder"),
    (None, "ham10000", "/no/such/folder", "not a folder"),
])
def test_resolve_dataset_plain_errors(tmp_path, zip_file, dataset, data_dir, expected):
    with pytest.raises(DataError, match=expected):
        resolve_dataset(zip_file, dataset, data_dir, tmp_path)


def test_data_roots_confine_registered_datasets(tmp_path):
    data = _classes(tmp_path / "allowed" / "set", {"x": 5, "y": 5})
    assert resolve_dataset(None, "imagefolder", str(data), tmp_path, data_roots=[tmp_path / "allowed"])[2].ok
    escape = str(tmp_path / "allowed" / ".." / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    for folder in (escape, str(tmp_path)):
        with pytest.raises(DataError, match="outside the folders"):
            resolve_dataset(None, "imagefolder", folder, tmp_path, data_roots=[tmp_path / "allowed"])
