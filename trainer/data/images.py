"""Image loading for training and for app uploads: any PNG/JPEG/TIFF/BMP or DICOM -> PIL RGB.

Format is sniffed from the content (DICOM by its 'DICM' marker, the rest by PIL), not by
extension. Every failure is a DataError that names the file.
"""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .dicom import has_dicom_extension, has_dicom_magic, read_dicom, source_name
from .errors import DataError

MAX_PIXELS = 64_000_000  # decompression-bomb guard: 64 megapixels
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".dcm", ".dicom")


def _check_size(width: int, height: int, name: str, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise DataError(f"{name} is {width}x{height} = {width * height / 1e6:.0f} megapixels; "
                        f"images above {max_pixels / 1e6:.0f} megapixels are refused "
                        f"(possible decompression bomb). Downscale it first.")


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map a high-bit-depth array to 0..255 by its own min/max (a constant image becomes 0)."""
    arr = arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: 16-bit/float grey scaled by its range, alpha composited on black."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":  # I, I;16, I;16B, I;16L, F: high bit depth grey
        return Image.fromarray(_scale_to_uint8(np.asarray(img))).convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _open_pil(src, name: str, max_pixels: int, min_size: int | None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src) as img:
                _check_size(img.width, img.height, name, max_pixels)
                if min_size and img.format == "JPEG":
                    # Let libjpeg decode at a reduced scale (fast) while both sides stay >= min_size.
                    img.draft("RGB", (min_size, min_size))
                img.load()
                img = ImageOps.exif_transpose(img)
                return to_rgb(img).copy()
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{name} is larger than {max_pixels / 1e6:.0f} megapixels and was refused "
                        f"(possible decompression bomb). Downscale it first.") from exc
    except UnidentifiedImageError as exc:
        raise DataError(f"{name} is not a recognised image: expected PNG, JPEG, TIFF, BMP or "
                        f"DICOM content, found something else.") from exc
    except FileNotFoundError as exc:
        raise DataError(f"{name}: file not found.") from exc
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise DataError(f"{name} is truncated or corrupt and could not be decoded "
                        f"({type(exc).__name__}: {exc}).") from exc


def _dicom_to_pil(src, name: str, max_pixels: int) -> Image.Image:
    arr = read_dicom(src, max_pixels=max_pixels)
    _check_size(arr.shape[1], arr.shape[0], name, max_pixels)
    return Image.fromarray(arr).convert("RGB")


def load_image(source, *, max_pixels: int = MAX_PIXELS, min_size: int | None = None) -> Image.Image:
    """Load an image as an 8-bit RGB PIL image.

    source: a path, bytes, a binary file object (e.g. an upload), or an already decoded PIL
        image / uint8 numpy array (converted to RGB).
    max_pixels: refuse larger images (decompression bombs) with a DataError.
    min_size: optional speed hint; JPEGs may be decoded at reduced scale keeping both sides >= min_size.

    Grey, palette, RGBA (composited on black), 16-bit (scaled by the image's own min/max),
    EXIF-rotated photos and DICOM (sniffed by content) all come back as RGB.

    Every failure is a :class:`DataError` naming the file and the reason; no other exception escapes.
    """
    try:
        return _load(source, max_pixels, min_size)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - the class: any decoder's own error becomes a DataError
        reason = " ".join(str(exc).split())[:400]
        raise DataError(f"{source_name(source) if not isinstance(source, (Image.Image, np.ndarray)) else 'image'} "
                        f"could not be decoded ({type(exc).__name__}: {reason}).") from exc


def _load(source, max_pixels: int, min_size: int | None) -> Image.Image:
    if isinstance(source, Image.Image):  # already decoded (e.g. a Gradio image component)
        _check_size(source.width, source.height, "image", max_pixels)
        return to_rgb(source).copy()
    if isinstance(source, np.ndarray):
        if source.ndim not in (2, 3):
            raise DataError(f"expected an image array HxW or HxWxC, found shape {source.shape}.")
        _check_size(source.shape[1], source.shape[0], "image", max_pixels)
        return to_rgb(Image.fromarray(source))
    name = source_name(source)
    if isinstance(source, (str, os.PathLike)) and not os.path.isfile(source):
        raise DataError(f"{name}: file not found." if not os.path.exists(source)
                        else f"{name} is not a file.")
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(source))
    if has_dicom_magic(source):
        return _dicom_to_pil(source, name, max_pixels)
    try:
        return _open_pil(source, name, max_pixels, min_size)
    except DataError:
        # A preamble-less DICOM named *.dcm: try DICOM before giving up.
        if has_dicom_extension(source):
            if hasattr(source, "seek"):
                source.seek(0)
            return _dicom_to_pil(source, name, max_pixels)
        raise
