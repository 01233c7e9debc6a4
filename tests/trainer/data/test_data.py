"""Tests of trainer.data: DICOM and image decoding, dataset layouts (splits: test_splits.py, the image
cache: test_cache.py).

Real files where they exist offline: pydicom's and pydicom-data's DICOM examples, and the real
RSNA pneumonia and NIH ChestX-ray14 label tables shipped inside torchxrayvision.
"""
from __future__ import annotations

import gzip
import io
import shutil
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array

from trainer.data import (DATASETS, DataError, is_dicom, load_dataset, load_image, read_dicom, read_nih_labels,
                          read_rsna_labels)
from trainer.data.dicom import dicom_to_uint8

TXV_DATA = Path(__import__("torchxrayvision").__file__).parent / "data"


def minmax_uint8(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return np.round((a - a.min()) / (a.max() - a.min()) * 255).astype(np.uint8)


def save_png(path: Path, color=(200, 30, 30), size=(32, 32), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)
    return path


def save_jpg(path: Path, color=(30, 200, 30), size=(32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG")
    return path


# ----------------------------------------------------------------------------- DICOM

def test_is_dicom_sniffs_magic_and_extension(tmp_path):
    ct = get_testdata_file("CT_small.dcm")
    assert is_dicom(ct)
    data = Path(ct).read_bytes()
    assert is_dicom(data) and is_dicom(io.BytesIO(data))
    renamed = tmp_path / "scan.bin"          # no extension: found by content
    renamed.write_bytes(data)
    assert is_dicom(renamed)
    png = save_png(tmp_path / "a.png")
    assert not is_dicom(png) and not is_dicom(png.read_bytes())
    assert is_dicom(tmp_path / "named.dcm")  # extension alone counts


def test_ct_16bit_rescaled_and_scaled_to_full_range():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert ds.BitsAllocated == 16 and "RescaleSlope" in ds
    out = read_dicom(path)
    expected = minmax_uint8(apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds))
    assert out.dtype == np.uint8 and out.shape == (128, 128)
    assert out.min() == 0 and out.max() == 255
    assert len(np.unique(out)) > 100          # scaled, not saturated or truncated to a few levels
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_mr_window_applied():
    path = get_testdata_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    assert "WindowCenter" in ds
    out = read_dicom(path)
    windowed = minmax_uint8(apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds))
    plain = minmax_uint8(ds.pixel_array)
    assert np.abs(out.astype(int) - windowed).max() <= 1
    assert not np.array_equal(windowed, plain)  # the window matters for this file


def test_monochrome1_chest_cr_is_inverted():
    path = get_testdata_file("RG1_UNCR.dcm")   # a real chest CR stored as MONOCHROME1
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    out = read_dicom(path)
    manual = minmax_uint8(apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds))
    assert np.abs(out.astype(int) - (255 - manual.astype(int))).max() <= 1
    assert abs(out.mean() - (255 - manual.mean())) < 0.5
    ds.PhotometricInterpretation = "MONOCHROME2"
    as_mono2 = dicom_to_uint8(ds)
    assert np.array_equal(out.astype(int) + as_mono2.astype(int), np.full(out.shape, 255))


def test_multiframe_gives_middle_frame():
    path = get_testdata_file("emri_small.dcm")
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array
    assert frames.shape == (10, 64, 64)
    out = read_dicom(path)
    assert out.shape == (64, 64)
    assert np.abs(out.astype(int) - minmax_uint8(frames[5])).max() <= 1
    assert not np.array_equal(minmax_uint8(frames[5]), minmax_uint8(frames[0]))


def test_colour_dicoms_rgb_ybr_palette():
    rgb_path = get_testdata_file("US1_UNCR.dcm")
    rgb = read_dicom(rgb_path)
    assert rgb.shape == (480, 640, 3) and np.array_equal(rgb, pydicom.dcmread(rgb_path).pixel_array)
    # The same picture stored as RGB and as YBR_FULL: YBR must come back converted to RGB.
    same_rgb = read_dicom(get_testdata_file("SC_rgb.dcm"))
    from_ybr = read_dicom(get_testdata_file("SC_ybr_full_uncompressed.dcm"))
    assert pydicom.dcmread(get_testdata_file("SC_ybr_full_uncompressed.dcm")).PhotometricInterpretation == "YBR_FULL"
    assert np.abs(same_rgb.astype(int) - from_ybr.astype(int)).mean() < 3
    # JPEG-compressed YBR_FULL_422, 30 frames: the middle frame in RGB.
    ybr = pydicom.examples.get_path("ybr_color")
    out = read_dicom(ybr)
    assert out.shape == (240, 320, 3)
    assert np.array_equal(out, pixel_array(ybr, index=15))
    pal = read_dicom(pydicom.examples.get_path("palette_color"))
    assert pal.shape == (350, 800, 3) and pal.dtype == np.uint8
    rgb16 = read_dicom(get_testdata_file("SC_rgb_16bit.dcm"))
    assert rgb16.dtype == np.uint8 and rgb16.max() == 255


def test_dicom_without_pixel_data_and_non_dicom(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    path = tmp_path / "nopixels.dcm"
    ds.save_as(path)
    with pytest.raises(DataError, match="without pixel data"):
        read_dicom(path)
    with pytest.raises(DataError, match="without pixel data"):
        load_image(path)
    with pytest.raises(DataError, match="not a DICOM"):
        read_dicom(save_png(tmp_path / "x.png"))


def test_load_image_sniffs_dicom_without_extension(tmp_path):
    path = tmp_path / "upload"
    shutil.copy(get_testdata_file("CT_small.dcm"), path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (128, 128)
    assert np.array_equal(np.asarray(img)[..., 0], read_dicom(path))
    assert load_image(path.read_bytes()).size == (128, 128)


# ----------------------------------------------------------------------------- images

def test_rgba_composited_on_black(tmp_path):
    arr = np.zeros((8, 8, 4), dtype=np.uint8)
    arr[:4] = (255, 255, 255, 0)    # fully transparent white -> black
    arr[4:] = (255, 0, 0, 255)      # opaque red stays red
    path = tmp_path / "rgba.png"
    Image.fromarray(arr, "RGBA").save(path)
    out = np.asarray(load_image(path))
    assert out.shape == (8, 8, 3)
    assert (out[:4] == 0).all() and (out[4:] == (255, 0, 0)).all()


def test_16bit_png_scaled_by_range_not_truncated(tmp_path):
    arr = np.arange(4096, dtype=np.uint16).reshape(64, 64)   # a 12-bit range stored in 16-bit
    path = tmp_path / "xray16.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")              # really a 16-bit PNG
    out = np.asarray(load_image(path))[..., 0].astype(int)
    assert out.min() == 0 and out.max() == 255
    assert abs(out.reshape(-1)[2048] - 128) <= 1               # mid-grey stays mid-grey
    assert len(np.unique(out)) == 256


def test_palette_grey_and_file_like(tmp_path):
    pal = Image.new("P", (4, 4))
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((0, 0), 1)
    path = tmp_path / "pal.png"
    pal.save(path)
    out = np.asarray(load_image(path))
    assert tuple(out[0, 0]) == (10, 200, 30) and tuple(out[1, 1]) == (0, 0, 0)
    grey = save_png(tmp_path / "grey.png", color=(77,), mode="L")
    g = np.asarray(load_image(grey))
    assert g.shape == (32, 32, 3) and (g == 77).all()
    with open(grey, "rb") as f:
        assert load_image(f).size == (32, 32)
    assert load_image(io.BytesIO(grey.read_bytes())).mode == "RGB"


def test_load_image_accepts_decoded_images():
    arr16 = (np.arange(256, dtype=np.uint16) * 16).reshape(16, 16)
    out = np.asarray(load_image(Image.fromarray(arr16)))
    assert out.shape == (16, 16, 3) and out.min() == 0 and out.max() == 255
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 1] = 200                                  # green but fully transparent -> black
    assert (np.asarray(load_image(rgba)) == 0).all()
    with pytest.raises(DataError, match="megapixels"):
        load_image(np.zeros((100, 100), dtype=np.uint8), max_pixels=50)


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6   # rotate 90 degrees
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif.tobytes())
    assert Image.open(path).size == (40, 20)
    assert load_image(path).size == (20, 40)


def test_truncated_text_and_missing_files(tmp_path):
    good = save_jpg(tmp_path / "full.jpg", size=(64, 64))
    data = good.read_bytes()
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated.jpg"):
        load_image(bad)
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n" * 20)
    with pytest.raises(DataError, match="not a recognised image"):
        load_image(text)
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "nope.png")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size but holds no pixels: a decompression bomb for PIL's opener."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_refused(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(30000, 30000))     # 900 megapixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # no PIL warning may escape
        with pytest.raises(DataError, match="megapixels"):
            load_image(bomb)
    small = save_png(tmp_path / "s.png", size=(100, 100))
    with pytest.raises(DataError, match="megapixels"):
        load_image(small, max_pixels=5000)
    assert load_image(small).size == (100, 100)


# ----------------------------------------------------------------------------- datasets

HAM_ROWS = [  # lesion_id, image_id, dx: 7 classes, lesions with several images
    ("HAM_0000001", "ISIC_0000001", "akiec"), ("HAM_0000001", "ISIC_0000002", "akiec"),
    ("HAM_0000002", "ISIC_0000003", "bcc"), ("HAM_0000003", "ISIC_0000004", "bkl"),
    ("HAM_0000004", "ISIC_0000005", "df"), ("HAM_0000005", "ISIC_0000006", "mel"),
    ("HAM_0000006", "ISIC_0000007", "nv"), ("HAM_0000006", "ISIC_0000008", "nv"),
    ("HAM_0000006", "ISIC_0000009", "nv"), ("HAM_0000007", "ISIC_0000010", "vasc"),
    ("HAM_0000008", "ISIC_0000011", "nv"),                      # its image is missing
]


def make_ham(root: Path, rows=HAM_ROWS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"lesion_id": l, "image_id": i, "dx": d, "dx_type": "histo", "age": 50.0, "sex": "male",
                   "localization": "back"} for l, i, d in rows]).to_csv(root / "HAM10000_metadata.csv", index=False)
    for k, (_, image_id, _) in enumerate(rows[:-1]):
        part = "HAM10000_images_part_1" if k % 2 else "HAM10000_images_part_2/nested"
        save_jpg(root / part / f"{image_id}.jpg")
    save_jpg(root / "ham10000_images_part_1" / "ISIC_0000001.jpg")   # Kaggle's duplicate copy
    return root


def test_ham10000_layout(tmp_path):
    index = load_dataset("ham10000", make_ham(tmp_path / "ham"))
    assert index.class_names == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert len(index) == 10 and not index.multilabel
    assert index.class_counts() == {"akiec": 2, "bcc": 1, "bkl": 1, "df": 1, "mel": 1, "nv": 3, "vasc": 1}
    assert index.groups[:2] == ["HAM_0000001", "HAM_0000001"]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in index.paths)
    assert any("1 of 11 rows skipped: image missing" in n for n in index.notes)
    assert index.labels.dtype == np.int64


def test_ham10000_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("ham10000", tmp_path / "absent")
    (tmp_path / "empty" / "stuff").mkdir(parents=True)
    with pytest.raises(DataError) as err:
        load_dataset("ham10000", tmp_path / "empty")
    assert "HAM10000_metadata.csv" in str(err.value) and "Expected layout" in str(err.value)
    assert "stuff/" in str(err.value)                       # what was found is listed
    root = make_ham(tmp_path / "bad", HAM_ROWS[:-1] + [("HAM_9", "ISIC_0000099", "melanomaa")])
    with pytest.raises(DataError, match="melanomaa"):
        load_dataset("ham10000", root)


def test_breastus_masks_excluded(tmp_path):
    base = tmp_path / "busi" / "Dataset_BUSI_with_GT"
    counts = {"benign": 3, "malignant": 2, "normal": 2}
    for cls, n in counts.items():
        for i in range(1, n + 1):
            save_png(base / cls / f"{cls} ({i}).png", mode="L", color=(i * 20,))
            save_png(base / cls / f"{cls} ({i})_mask.png", mode="L", color=(255,))
        save_png(base / cls / f"{cls} (1)_mask_1.png", mode="L", color=(255,))
    index = load_dataset("breastus", tmp_path / "busi")
    assert index.class_names == ["benign", "malignant", "normal"]
    assert index.class_counts() == counts
    assert not any("_mask" in Path(p).name for p in index.paths)
    assert any("10 segmentation masks ignored" in n for n in index.notes)
    shutil.rmtree(base / "normal")
    with pytest.raises(DataError, match="benign/, malignant/ and normal/"):
        load_dataset("breastus", tmp_path / "busi")


FITZ_COLUMNS = ["md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label", "nine_partition_label",
                "three_partition_label", "qc", "url", "url_alphanum"]


def make_fitzpatrick(root: Path, n: int = 12, with_images: int = 9) -> Path:
    rows = []
    three = ["non-neoplastic", "benign", "malignant"]
    nine = ["inflammatory", "benign dermal", "malignant melanoma"]
    for i in range(n):
        md5 = f"{i:032x}"
        rows.append([md5, i % 6 + 1, i % 6 + 1, f"disease {i % 4}", nine[i % 3], three[i % 3], "",
                     f"https://example.org/{md5}.jpg", f"httpsexampleorg{md5}jpg"])
        if i < with_images:
            save_jpg(root / "images" / ("a" if i % 2 else "b") / f"{md5}.jpg")
    pd.DataFrame(rows, columns=FITZ_COLUMNS).to_csv(root / "fitzpatrick17k.csv", index=False)
    return root


def test_fitzpatrick17k_tasks_and_missing_images(tmp_path):
    root = make_fitzpatrick(tmp_path / "fitz")
    index = load_dataset("fitzpatrick17k", root)
    assert index.class_names == ["benign", "malignant", "non-neoplastic"]
    assert len(index) == 9 and index.class_counts() == {"benign": 3, "malignant": 3, "non-neoplastic": 3}
    assert any("3 of 12 rows skipped: image missing" in n for n in index.notes)
    nine = load_dataset("fitzpatrick17k", root, task="nine_partition_label")
    assert nine.class_names == ["benign dermal", "inflammatory", "malignant melanoma"]
    fine = load_dataset("fitzpatrick17k", root, task="label")
    assert fine.class_names == ["disease 0", "disease 1", "disease 2", "disease 3"]
    with pytest.raises(DataError, match="unknown task"):
        load_dataset("fitzpatrick17k", root, task="fitzpatrick")
    shutil.rmtree(root / "images")
    with pytest.raises(DataError, match="none of the 12 rows"):
        load_dataset("fitzpatrick17k", root)


def test_smdg_full_fundus_only_and_suspects(tmp_path):
    root = tmp_path / "smdg"
    names = ["BEH-1", "BEH-2", "CRFO-v4-3", "sjchoi86-HRF-4", "OIA-ODIR-5", "G1020-6"]
    types = [0, 1, 0, 1, -1, 1]
    root.mkdir()
    pd.DataFrame({"names": names, "types": types, "fundus": [f"/full-fundus/{n}.png" for n in names]}) \
        .to_csv(root / "metadata - standardized.csv", index=False)
    for n in names:
        save_png(root / "full-fundus" / "full-fundus" / f"{n}.png", color=(150, 60, 20))
        save_png(root / "optic-disc" / "optic-disc" / f"{n}.png", mode="L", color=(255,))
    index = load_dataset("smdg", root)
    assert index.class_names == ["non_glaucoma", "glaucoma"]
    assert len(index) == 5 and index.class_counts() == {"non_glaucoma": 2, "glaucoma": 3}
    assert all("full-fundus" in p for p in index.paths)
    assert any("1 glaucoma-suspect" in n for n in index.notes)
    with_suspect = load_dataset("smdg", root, include_suspect=True)
    assert with_suspect.class_names == ["non_glaucoma", "glaucoma", "suspect"] and len(with_suspect) == 6
    (root / "metadata - standardized.csv").rename(root / "smdg_labels.csv")   # any CSV with names,types
    assert len(load_dataset("smdg", root)) == 5
    pd.DataFrame({"names": ["BEH-1"], "types": [2]}).to_csv(root / "smdg_labels.csv", index=False)
    with pytest.raises(DataError, match="unknown value"):
        load_dataset("smdg", root)


def test_rsna_real_label_file(tmp_path):
    root = tmp_path / "rsna"
    root.mkdir()
    with zipfile.ZipFile(TXV_DATA / "kaggle_stage_2_train_labels.csv.zip") as z:
        z.extract("stage_2_train_labels.csv", root)
    per_patient = read_rsna_labels(root / "stage_2_train_labels.csv")
    assert len(per_patient) == 26684 and int(per_patient["Target"].sum()) == 6012
    raw = pd.read_csv(root / "stage_2_train_labels.csv")
    assert len(raw) == 30227                                 # several box rows per positive patient
    first = per_patient["patientId"].tolist()[:40]
    dicom = get_testdata_file("MR_small.dcm")
    for pid in first:
        (root / "stage_2_train_images").mkdir(exist_ok=True)
        shutil.copy(dicom, root / "stage_2_train_images" / f"{pid}.dcm")
    index = load_dataset("rsna_pneumonia", root)
    assert len(index) == 40 and index.class_names == ["normal", "pneumonia"]
    assert index.groups == first
    expected = per_patient.set_index("patientId").loc[first, "Target"].to_numpy()
    assert np.array_equal(index.labels, expected)
    assert any("26644 of 26684 patients skipped" in n for n in index.notes)
    assert load_image(index.paths[0]).size == (64, 64)


def test_chestxray14_real_label_file(tmp_path):
    df, matrix = read_nih_labels(TXV_DATA / "Data_Entry_2017_v2020.csv.gz")
    assert len(df) == 112120 and df["Patient ID"].nunique() == 30805
    assert int((matrix.sum(axis=1) == 0).sum()) == 60361       # "No Finding"
    assert int(matrix[:, -1].sum()) == 227                      # Hernia, the rarest
    root = tmp_path / "nih"
    root.mkdir()
    with gzip.open(TXV_DATA / "Data_Entry_2017_v2020.csv.gz") as src, \
            open(root / "Data_Entry_2017_v2020.csv", "wb") as dst:
        shutil.copyfileobj(src, dst)
    names = df["Image Index"].tolist()[:40]
    for k, name in enumerate(names):
        folder = root / ("images_001" if k < 20 else "images_002") / "images"
        save_png(folder / name, mode="L", color=(k * 5,), size=(16, 16))
    (root / "test_list.txt").write_text("\n".join(names[30:]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(names[:30]) + "\n")
    index = load_dataset("chestxray14", root)
    assert index.multilabel and len(index) == 40
    assert index.class_names == ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                                 "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema",
                                 "Fibrosis", "Pleural_Thickening", "Hernia"]
    assert index.labels.dtype == np.float32 and index.labels.shape == (40, 14)
    row = index.paths.index(str(root / "images_001" / "images" / "00000001_001.png"))
    positives = [c for c, v in zip(index.class_names, index.labels[row]) if v]
    assert positives == ["Cardiomegaly", "Emphysema"] and index.groups[row] == "1"
    assert index.official_test.sum() == 10 and index.official_test[-10:].all()
    assert any("112080 of 112120 images skipped" in n for n in index.notes)
    assert load_dataset("chestxray14", root, official_split=False).official_test is None


def test_imagefolder_flat_and_split(tmp_path):
    flat = tmp_path / "flat"
    for cls, n in {"cats": 3, "dogs": 2}.items():
        for i in range(n):
            save_png(flat / cls / ("sub" if i else "") / f"{i}.png")
    (flat / "cats" / "readme.txt").write_text("not an image")
    index = load_dataset("imagefolder", flat)
    assert index.class_names == ["cats", "dogs"] and index.class_counts() == {"cats": 3, "dogs": 2}
    assert index.official_test is None
    split = tmp_path / "split"
    for part in ("train", "test"):
        for cls in ("a", "b"):
            save_png(split / part / cls / "x.png")
            save_png(split / part / cls / "y.png")
    index = load_dataset("imagefolder", split)
    assert len(index) == 8 and index.official_test.sum() == 4
    assert all("/test/" in p for p, t in zip(index.paths, index.official_test) if t)
    one = tmp_path / "one"
    save_png(one / "only" / "x.png")
    with pytest.raises(DataError, match="at least 2 class folders"):
        load_dataset("imagefolder", one)


def test_csv_loader(tmp_path):
    root = tmp_path / "mine"
    for i in range(4):
        save_png(root / "imgs" / f"{i}.png")
    pd.DataFrame({"path": [f"imgs/{i}.png" for i in range(5)], "label": ["b", "a", "b", "a", "a"],
                  "group": ["p1", "p1", "p2", "p3", "p4"]}).to_csv(root / "labels.csv", index=False)
    index = load_dataset("csv", root)
    assert index.class_names == ["a", "b"] and len(index) == 4
    assert index.labels.tolist() == [1, 0, 1, 0] and index.groups == ["p1", "p1", "p2", "p3"]
    assert any("1 of 5 rows skipped" in n for n in index.notes)
    with pytest.raises(DataError, match="not found"):
        load_dataset("csv", root, csv_path="other.csv")
    pd.DataFrame({"file": ["imgs/0.png"], "y": [1]}).to_csv(root / "wrong.csv", index=False)
    with pytest.raises(DataError, match="lacks column"):
        load_dataset("csv", root, csv_path="wrong.csv")


def test_registry_and_options(tmp_path):
    assert set(DATASETS) == {"ham10000", "breastus", "fitzpatrick17k", "smdg", "rsna_pneumonia",
                             "chestxray14", "chexpert", "imagefolder", "csv"}
    with pytest.raises(DataError, match="Unknown dataset"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(DataError, match="Unknown option"):
        load_dataset("ham10000", tmp_path, task="x")
