"""DICOM reading: one display-ready uint8 image out of a DICOM file.

The pipeline follows the DICOM display chain: Modality LUT (rescale slope/intercept or a LUT), VOI
LUT or windowing, min/max scaling to 0..255, MONOCHROME1 (and an INVERSE presentation LUT) inverted.
Multi-frame files give their middle frame; colour (RGB, YBR_* converted, palette) comes back as RGB,
whatever the planar configuration; signed, 32-bit and float pixel data are scaled by their range.

Compressed pixel data is decoded by pydicom's own plugins (pylibjpeg's libjpeg, openjpeg and RLE,
GDCM, pyjpegls: all in requirements.txt; pydicom picks one per transfer syntax). Where every plugin
refuses a JPEG frame (12-bit JPEG Extended, which GDCM and pylibjpeg do not decode), imagecodecs'
libjpeg-turbo decodes it. A file without a Transfer Syntax UID in its meta header (written by old
tools) is read with the encoding pydicom found it in.

Every failure is a :class:`DataError` naming the file and the reason: not DICOM, no pixel data (and
the SOP class it is instead), a missing pixel-description element, a truncated or corrupt file, or
pixel data no installed decoder reads (naming the transfer syntax).
"""
from __future__ import annotations

import io
import os

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

from .errors import DataError

DICOM_EXTENSIONS = (".dcm", ".dicom")
_MAGIC_OFFSET = 128
_MAGIC = b"DICM"
PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
REQUIRED = ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation")
# JPEG transfer syntaxes imagecodecs decodes when pydicom's plugins cannot (baseline, extended, lossless)
JPEG_SYNTAXES = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                 "1.2.840.10008.1.2.4.70")


def source_name(src) -> str:
    """A printable name for a path, bytes or file-like (for error messages)."""
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return str(getattr(src, "name", "<file object>"))


def has_dicom_magic(src) -> bool:
    """True if the source holds 'DICM' at byte 128 (the DICOM Part 10 file preamble)."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src[_MAGIC_OFFSET:_MAGIC_OFFSET + 4]) == _MAGIC
    if isinstance(src, (str, os.PathLike)):
        try:
            with open(src, "rb") as f:
                head = f.read(_MAGIC_OFFSET + 4)
        except OSError:
            return False
        return head[_MAGIC_OFFSET:] == _MAGIC
    try:  # file-like: peek and rewind
        pos = src.tell()
        head = src.read(_MAGIC_OFFSET + 4)
        src.seek(pos)
    except (OSError, AttributeError, ValueError):
        return False
    return bytes(head[_MAGIC_OFFSET:]) == _MAGIC


def has_dicom_extension(src) -> bool:
    name = source_name(src).lower()
    return name.endswith(DICOM_EXTENSIONS)


def is_dicom(path_or_bytes) -> bool:
    """True if `path_or_bytes` (a path, bytes or a binary file object) looks like DICOM.

    Sniffs the 'DICM' marker at byte 128; a file named *.dcm / *.dicom also counts
    (some DICOM writers omit the preamble).
    """
    return has_dicom_magic(path_or_bytes) or has_dicom_extension(path_or_bytes)


def _read_dataset(src) -> pydicom.Dataset:
    name = source_name(src)
    magic = has_dicom_magic(src)
    if not magic and not has_dicom_extension(src):
        raise DataError(f"{name} is not a DICOM file: expected the 'DICM' marker at byte 128 "
                        f"(or a .dcm/.dicom name), found neither.")
    if isinstance(src, (bytes, bytearray, memoryview)):
        src = io.BytesIO(bytes(src))
    try:
        # force=True only for preamble-less files that at least carry a DICOM file name.
        ds = pydicom.dcmread(src, force=not magic)
        ds.file_meta  # noqa: B018 - reading it now surfaces a corrupt header here
    except InvalidDicomError as exc:
        raise DataError(f"{name} is not a valid DICOM file: {exc}") from exc
    except Exception as exc:  # truncated or corrupt files raise many kinds of error
        raise DataError(f"{name} could not be read as DICOM ({type(exc).__name__}: {exc})") from exc
    return ds


def _transfer_syntax(ds: pydicom.Dataset):
    return getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)


def _infer_transfer_syntax(ds: pydicom.Dataset) -> None:
    """A native (uncompressed) dataset without a Transfer Syntax UID: the encoding it was read in."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if _transfer_syntax(ds) is not None:
        return
    elem = ds.get("PixelData")
    if elem is not None and getattr(ds["PixelData"], "is_undefined_length", False):
        return  # encapsulated (compressed) data: the codec cannot be guessed
    implicit, little = ds.original_encoding
    if implicit is None:
        return
    ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit
                                      else ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _check_pixel_module(ds: pydicom.Dataset, name: str, max_pixels: int | None) -> None:
    if not any(tag in ds for tag in PIXEL_TAGS):
        sop = ds.get("SOPClassUID")
        kind = f" ({sop.name})" if sop is not None and hasattr(sop, "name") else ""
        raise DataError(f"{name} is a DICOM file without pixel data{kind}: expected an image "
                        f"(a PixelData element), found none.")
    missing = [k for k in REQUIRED if ds.get(k) in (None, "")]
    if "PixelData" in ds and ds.get("BitsAllocated") in (None, ""):
        missing.append("BitsAllocated")
    if missing:
        raise DataError(f"{name}: its pixel data cannot be interpreted: the image description lacks "
                        f"{', '.join(missing)}.")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows < 1 or cols < 1:
        raise DataError(f"{name}: the header gives an empty image ({rows}x{cols}).")
    if max_pixels and rows * cols > max_pixels:
        raise DataError(f"{name} is {cols}x{rows} = {rows * cols / 1e6:.0f} megapixels; images above "
                        f"{max_pixels / 1e6:.0f} megapixels are refused (possible decompression bomb).")


def _imagecodecs_frame(ds: pydicom.Dataset, index: int | None) -> np.ndarray:
    """One JPEG frame decoded by imagecodecs (libjpeg-turbo: 8- and 12-bit baseline/extended, lossless)."""
    import imagecodecs
    from pydicom.encaps import generate_frames

    frames = int(ds.get("NumberOfFrames", 1) or 1)
    for i, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=frames)):
        if i == (index or 0):
            arr = imagecodecs.jpeg8_decode(frame) if ds.file_meta.TransferSyntaxUID in JPEG_SYNTAXES[:2] \
                else imagecodecs.ljpeg_decode(frame)
            if arr.shape[:2] != (int(ds.Rows), int(ds.Columns)):
                raise ValueError(f"decoded frame is {arr.shape[:2]}, the header says {ds.Rows}x{ds.Columns}")
            if int(ds.get("PixelRepresentation", 0) or 0) == 1:  # signed samples stored as unsigned
                bits = int(ds.BitsStored)
                arr = arr.astype(np.int32)
                arr = np.where(arr >= 1 << (bits - 1), arr - (1 << bits), arr)
            return arr
    raise ValueError(f"frame {index} not found in the encapsulated pixel data")


def _decode(ds: pydicom.Dataset, name: str, index: int | None) -> np.ndarray:
    try:
        return pixel_array(ds, index=index)  # YBR colour is converted to RGB by default
    except Exception as exc:
        ts = _transfer_syntax(ds)
        if ts in JPEG_SYNTAXES:
            try:
                return _imagecodecs_frame(ds, index)
            except Exception:  # noqa: BLE001 - report pydicom's reason, it names every plugin tried
                pass
        ts_name = getattr(ts, "name", ts) or "no transfer syntax in the file meta header"
        reason = " ".join(str(exc).split())
        raise DataError(f"{name}: the pixel data ({ts_name}) could not be decoded "
                        f"({type(exc).__name__}: {reason[:400]}).") from exc


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale an array to uint8 0..255 by its own min/max (a constant image becomes 0; NaN and inf
    become the minimum)."""
    arr = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        return np.zeros(arr.shape, dtype=np.uint8)
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    arr = np.where(finite, arr, lo)
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _grey(arr: np.ndarray, ds: pydicom.Dataset, photometric: str) -> np.ndarray:
    """Modality LUT, VOI LUT / window, scaled to uint8, inverted for MONOCHROME1. A malformed LUT or
    window (a real-world header error) is skipped: the image is then scaled by its own range."""
    bits_stored = int(ds.get("BitsStored", 8) or 8)
    for step in (apply_modality_lut, apply_voi_lut):
        try:
            arr = step(arr, ds)
        except Exception:  # noqa: BLE001 - a broken LUT element: fall back to min/max scaling
            pass
    out = arr if arr.dtype == np.uint8 and bits_stored == 8 else _to_uint8(arr)
    inverse = photometric == "MONOCHROME1"
    if str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE":
        inverse = not inverse
    return 255 - out if inverse else out


def _frame_index(ds: pydicom.Dataset) -> int | None:
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    return frames // 2 if frames > 1 else None


def dicom_to_uint8(ds: pydicom.Dataset, name: str = "<dataset>", max_pixels: int | None = None) -> np.ndarray:
    """Decode the (middle frame of the) pixel data of `ds` into uint8 HxW or HxWx3."""
    try:
        _infer_transfer_syntax(ds)
        _check_pixel_module(ds, name, max_pixels)
        arr = _decode(ds, name, _frame_index(ds))
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        if samples == 1 and photometric == "PALETTE COLOR":
            out = apply_color_lut(arr, ds)
            out = out if out.dtype == np.uint8 else _to_uint8(out)
        elif samples > 1 or arr.ndim == 3:  # RGB (YBR already converted); >8-bit colour scaled by its range
            rgb = arr[..., :3]
            out = rgb if rgb.dtype == np.uint8 else _to_uint8(rgb)
        else:
            out = _grey(arr, ds, photometric)
        if out.ndim not in (2, 3) or out.shape[0] < 1 or out.shape[1] < 1:
            raise DataError(f"{name}: decoded pixel data has shape {out.shape}, not an image.")
        return np.ascontiguousarray(out)
    except DataError:
        raise
    except Exception as exc:  # a corrupt element anywhere in the pixel module (e.g. '1A' in an IS field)
        reason = " ".join(str(exc).split())
        raise DataError(f"{name}: the DICOM image could not be read ({type(exc).__name__}: {reason[:400]}).") \
            from exc


def read_dicom(path_or_fileobj, max_pixels: int | None = None) -> np.ndarray:
    """Read a DICOM file (path, bytes or binary file object) into uint8 HxW (grey) or HxWx3 (RGB).

    Raises DataError for a non-DICOM file, a DICOM without pixel data, pixel data that cannot be
    decoded, or (with ``max_pixels``) an image larger than that, checked from the header before decoding.
    """
    name = source_name(path_or_fileobj)
    ds = _read_dataset(path_or_fileobj)
    return dicom_to_uint8(ds, name, max_pixels)
