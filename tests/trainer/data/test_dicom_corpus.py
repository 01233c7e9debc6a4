"""Real-world DICOM: pydicom's whole test corpus (pydicom's own test files, pydicom-data, pydicom.examples)
through ``load_image``, the one function the dataset loaders and the app's Classify tab use.

Every file whose pixel data pydicom (with its installed plugins) decodes must load; every other file
must raise ``DataError`` naming the file; nothing else may escape. Correctness is checked against the
corpus itself: the same picture stored in many transfer syntaxes (RLE, JPEG-LS, JPEG 2000, JPEG
Lossless, big endian, planar, 16/32-bit, YBR) must decode to the same pixels as its plain copy.
"""
from __future__ import annotations

import glob
import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files

from trainer.data import DataError, load_image


def _px(name: str) -> np.ndarray:
    return np.asarray(load_image(get_testdata_file(name)), dtype=int)


def corpus() -> list[str]:
    """Every file of pydicom's test corpus: its test_files folder (recursively), pydicom-data, the examples."""
    import pydicom.examples as examples

    root = Path(pydicom.__file__).parent / "data" / "test_files"
    files = set(glob.glob(str(root / "**" / "*"), recursive=True)) | set(get_testdata_files("*"))
    files |= {str(examples.get_path(n)) for n in ("ct", "mr", "rgb_color", "ybr_color", "palette_color", "jpeg2k",
                                                  "dicomdir", "rt_dose", "rt_plan", "rt_ss", "overlay", "waveform")}
    return sorted(f for f in files if os.path.isfile(f))


def pydicom_decodes(path: str) -> bool:
    try:
        pydicom.dcmread(path, force=True).pixel_array
        return True
    except Exception:  # noqa: BLE001 - the reference: any failure means pydicom cannot decode it
        return False


# The same picture in many encodings: (plain reference, lossless variants that must match it exactly).
LOSSLESS_FAMILIES = {
    "SC_rgb.dcm": ["SC_rgb_expb.dcm", "SC_rgb_rle.dcm", "SC_rgb_16bit.dcm", "SC_rgb_expb_32bit.dcm",
                   "SC_rgb_rle_32bit.dcm", "SC_rgb_gdcm2k_uncompressed.dcm", "SC_rgb_gdcm_KY.dcm",
                   "SC_rgb_jpeg_gdcm.dcm"],
    "MR_small.dcm": ["MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
                     "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_padded.dcm"],
    "emri_small.dcm": ["emri_small_RLE.dcm", "emri_small_big_endian.dcm", "emri_small_jpeg_2k_lossless.dcm",
                       "emri_small_jpeg_ls_lossless.dcm"],
    "SC_rgb_2frame.dcm": ["SC_rgb_expb_2frame.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_rle_32bit_2frame.dcm"],
    "OBXXXX1A.dcm": ["OBXXXX1A_expb.dcm", "OBXXXX1A_rle.dcm"],  # palette colour
    "US1_UNCR.dcm": ["US1_J2KR.dcm"],  # JPEG 2000 lossless RGB ultrasound
}
# Lossy encodings of the same picture: close to the plain copy (mean absolute difference in grey levels).
LOSSY = [("SC_rgb.dcm", "SC_rgb_dcmtk_+eb+cy+n2.dcm", 1.0),    # JPEG baseline YBR_FULL -> RGB
         ("SC_rgb.dcm", "SC_rgb_jls_lossy_line.dcm", 1.0),     # JPEG-LS near-lossless RGB
         ("SC_rgb.dcm", "SC_rgb_dcmtk_+eb+cr.dcm", 1.0),       # JPEG baseline RGB
         ("JPGExtended.dcm", "JPEG-lossy.dcm", 0.1)]           # 12-bit JPEG Extended (imagecodecs)


@pytest.mark.parametrize("ref", sorted(LOSSLESS_FAMILIES))
def test_one_picture_in_every_lossless_encoding_decodes_to_the_same_pixels(ref):
    expected = _px(ref)
    for name in LOSSLESS_FAMILIES[ref]:
        got = _px(name)
        assert got.shape == expected.shape and np.array_equal(got, expected), name


@pytest.mark.parametrize("ref,name,tol", LOSSY)
def test_lossy_encodings_are_close_to_the_plain_copy(ref, name, tol):
    a, b = _px(ref), _px(name)
    assert a.shape == b.shape and np.abs(a - b).mean() < tol


def test_jpeg_lossless_process14_and_jpeg_ls_decode():
    """The usual lossless syntax of radiography exports (Process 14 SV1) and JPEG-LS."""
    for name in ("JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "JPEGLSNearLossless_08.dcm",
                 "JPEGLSNearLossless_16.dcm", "emri_small_jpeg_ls_lossless.dcm"):
        img = _px(name)
        assert img.ndim == 3 and img.std() > 5, name  # a real picture, not a constant fill


def test_monochrome1_jpeg2000_matches_its_uncompressed_copy():
    assert pydicom.dcmread(get_testdata_file("RG3_J2KR.dcm"), stop_before_pixels=True).PhotometricInterpretation \
        == "MONOCHROME1"
    assert np.array_equal(_px("RG3_J2KR.dcm"), _px("RG3_UNCR.dcm"))


def test_multiframe_gives_the_middle_frame_and_signed_data_keeps_its_order():
    frames = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm")).pixel_array
    assert np.array_equal(_px("SC_rgb_rle_2frame.dcm"), frames[1])
    ds = pydicom.dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    assert ds.PixelRepresentation == 1  # signed samples
    raw = ds.pixel_array.astype(float)
    grey = _px("MR_small_jpeg_ls_lossless.dcm")[..., 0]
    assert np.corrcoef(raw.ravel(), grey.ravel())[0, 1] > 0.9


def test_file_without_transfer_syntax_is_read_in_its_own_encoding():
    img = _px("OT-PAL-8-face.dcm")  # palette colour, no (0002,0010) in its meta header
    assert img.shape == (480, 640, 3) and len(np.unique(img.reshape(-1, 3), axis=0)) > 50


def test_float_pixel_data_with_nan_is_scaled(tmp_path):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.30"  # parametric map
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    arr = np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)
    arr[0, 0] = np.nan
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated = 8, 8, 1, 32
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.FloatPixelData = arr.tobytes()
    path = tmp_path / "float.dcm"
    ds.save_as(path, enforce_file_format=True)
    grey = np.asarray(load_image(path))[..., 0]
    assert grey[0, 1] == 0 and grey[-1, -1] == 255 and grey[0, 0] == 0  # NaN drawn as the minimum


UNDECODABLE = ["badVR.dcm", "MR_truncated.dcm", "JPEG2000-embedded-sequence-delimiter.dcm", "rtplan.dcm",
               "meta_missing_tsyntax.dcm", "nested_priv_SQ.dcm", "waveform_ecg.dcm"]


@pytest.mark.parametrize("name", UNDECODABLE)
def test_undecodable_files_raise_data_error_naming_the_file(name):
    path = get_testdata_file(name)
    with pytest.raises(DataError) as err:
        load_image(path)
    assert name in str(err.value) and len(str(err.value).splitlines()) == 1


def test_no_other_exception_escapes_load_image(monkeypatch, tmp_path):
    """The class, not instances: whatever a decoder raises becomes a DataError naming the file."""
    import PIL.Image

    import trainer.data.dicom as dicom

    def boom(*a, **k):
        raise KeyError("decoder bug")

    monkeypatch.setattr(dicom, "pixel_array", boom)
    with pytest.raises(DataError, match="MR_small.dcm"):
        load_image(get_testdata_file("MR_small.dcm"))
    monkeypatch.undo()
    png = tmp_path / "x.png"
    PIL.Image.new("RGB", (4, 4)).save(png)
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("plugin bug")))
    with pytest.raises(DataError, match="x.png"):
        load_image(png)


@pytest.mark.slow
def test_whole_corpus_loads_or_raises_data_error():
    loaded, refused, reference = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in corpus():
            if pydicom_decodes(path):
                reference.append(path)
            try:
                img = load_image(path)
            except DataError as e:
                assert os.path.basename(path) in str(e), str(e)
                refused.append(path)
                continue
            assert img.mode == "RGB" and min(img.size) >= 1
            loaded.append(path)
    missing = sorted(set(reference) - set(loaded))
    assert not missing, f"pydicom decodes these, load_image does not: {missing}"
    # beyond pydicom's plugins: 12-bit JPEG Extended (imagecodecs) and a file without a transfer syntax
    assert {"JPEG-lossy.dcm", "OT-PAL-8-face.dcm"} <= {os.path.basename(p) for p in loaded}
    assert len(loaded) >= 126 and len(loaded) + len(refused) == len(corpus())
