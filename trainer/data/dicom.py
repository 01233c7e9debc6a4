"""DICOM reading: one display-ready uint8 image out of a DICOM file.

The pipeline follows the DICOM display chain: Modality LUT (rescale slope/intercept),
VOI LUT or windowing, min/max scaling to 0..255, MONOCHROME1 inversion. Multi-frame files
give their middle frame; colour (RGB, YBR, palette) comes back as RGB.
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
        return pydicom.dcmread(src, force=not magic)
    except InvalidDicomError as exc:
        raise DataError(f"{name} is not a valid DICOM file: {exc}") from exc
    except Exception as exc:  # truncated or corrupt files raise many kinds of error
        raise DataError(f"{name} could not be read as DICOM ({type(exc).__name__}: {exc})") from exc


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale an array to uint8 0..255 by its own min/max (a constant image becomes 0)."""
    arr = arr.astype(np.float32, copy=False)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def dicom_to_uint8(ds: pydicom.Dataset, name: str = "<dataset>") -> np.ndarray:
    """Decode the (middle frame of the) pixel data of `ds` into uint8 HxW or HxWx3."""
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = ds.get("SOPClassUID")
        kind = f" ({sop.name})" if sop is not None and hasattr(sop, "name") else ""
        raise DataError(f"{name} is a DICOM file without pixel data{kind}: expected an image "
                        f"(a PixelData element), found none.")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    index = frames // 2 if frames > 1 else None
    try:
        arr = pixel_array(ds, index=index)  # YBR colour is converted to RGB by default
    except Exception as exc:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = getattr(ts, "name", ts) or "unknown transfer syntax"
        raise DataError(f"{name}: the pixel data ({ts_name}) could not be decoded "
                        f"({type(exc).__name__}: {exc}). Compressed DICOM may need pylibjpeg "
                        f"or gdcm installed.") from exc

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)

    if samples == 1 and photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        return rgb if rgb.dtype == np.uint8 else _to_uint8(rgb)

    if samples > 1:  # RGB (YBR already converted); 16/32-bit colour is scaled by its range
        rgb = arr[..., :3]
        return rgb if rgb.dtype == np.uint8 else _to_uint8(rgb)

    bits_stored = int(ds.get("BitsStored", 8) or 8)
    arr = apply_modality_lut(arr, ds)
    arr = apply_voi_lut(arr, ds)
    if arr.dtype == np.uint8 and bits_stored == 8:
        out = arr  # plain 8-bit grey: keep its values
    else:
        out = _to_uint8(arr)
    inverse = photometric == "MONOCHROME1"
    if str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE":
        inverse = not inverse
    if inverse:
        out = 255 - out
    return np.ascontiguousarray(out)


def read_dicom(path_or_fileobj) -> np.ndarray:
    """Read a DICOM file (path, bytes or binary file object) into uint8 HxW (grey) or HxWx3 (RGB).

    Raises DataError for a non-DICOM file, a DICOM without pixel data, or pixel data that
    cannot be decoded.
    """
    name = source_name(path_or_fileobj)
    ds = _read_dataset(path_or_fileobj)
    return dicom_to_uint8(ds, name)
