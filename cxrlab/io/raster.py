"""PNG / JPEG / other Pillow formats: 8- and 16-bit, colour converted to grey, EXIF orientation applied."""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps

from cxrlab.errors import InputError
from cxrlab.io.header import ImageHeader


class ColorImageWarning(UserWarning):
    """A colour image was converted to grey (information in the colour channels is lost)."""


def open_raster(data: bytes, name: str) -> Image.Image:
    """Open lazily (header only), turning Pillow's failures into an :class:`InputError` naming the file."""
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise InputError(name, f"decompression bomb refused by Pillow: {exc}") from exc
    except Image.UnidentifiedImageError:
        raise InputError(name, f"not a readable image: {_what_it_is(data)}") from None
    except Exception as exc:  # SyntaxError / OSError on broken headers, ...
        raise InputError(name, f"not a readable image (corrupt or unknown format): {exc}") from exc


def _what_it_is(data: bytes) -> str:
    """A short guess at what unidentifiable bytes are, for the error message (no content is echoed)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG signature but a corrupt or truncated header"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG signature but a corrupt or truncated header"
    head = data[:4096]
    try:
        head.decode("utf-8")
        is_text = b"\x00" not in head
    except UnicodeDecodeError:
        is_text = False
    if is_text:
        return "the file holds text, not an image (PNG, JPEG or DICOM expected)"
    return "unknown format (PNG, JPEG or DICOM expected)"


def decode_raster(img: Image.Image, name: str) -> tuple[np.ndarray, ImageHeader]:
    """Decode a Pillow image to float32 HxW in [0, 1]: 8-bit / 255, 16-bit / (2**bits - 1) with ``bits`` the
    depth its values use (12-bit data in a 16-bit PNG / 4095)."""
    fmt = (img.format or "raster").lower()
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # truncated data raises OSError("image file is truncated ...")
        raise InputError(name, f"corrupt or truncated image data: {exc}") from exc
    mode = img.mode
    photometric = "MONOCHROME2"
    if mode in {"1", "L", "P", "LA", "PA", "RGB", "RGBA", "CMYK", "YCbCr"}:
        if mode in {"P", "PA", "CMYK", "YCbCr"}:
            img = img.convert("RGBA" if "A" in mode else "RGB")
        arr = np.asarray(img)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        if arr.ndim == 3:
            colour = arr[..., :3] if arr.shape[-1] >= 3 else arr[..., :1]
            if arr.shape[-1] in (2, 4):  # flatten alpha on black, like the shared data's conversion
                alpha = arr[..., -1:].astype(np.float32) / 255.0
                colour = (colour.astype(np.float32) * alpha).round().astype(np.uint8)
            arr = _to_grey(colour, name)
            photometric = "RGB" if colour.shape[-1] == 3 else photometric
        bits, scale = 8, 255.0
    elif mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img)
        if arr.max(initial=0) > 65535 or arr.min(initial=0) < 0:
            raise InputError(name, f"integer image values outside 16-bit range (mode {mode})")
        arr = arr.astype(np.uint16)
        # 10/12/14-bit detector data is stored in 16-bit PNGs: scale by the bit depth the values use, so a
        # 12-bit film is not read as nearly black (relative intensities are kept, no min-max stretch)
        bits = max(8, int(arr.max(initial=0)).bit_length())
        scale = float(2**bits - 1)
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        return _minmax(arr), ImageHeader(fmt, arr.shape[0], arr.shape[1], 32, photometric)
    else:
        raise InputError(name, f"unsupported image mode {mode!r}")
    out = arr.astype(np.float32) / scale
    return out, ImageHeader(format=fmt, rows=out.shape[0], columns=out.shape[1], bits_stored=bits,
                            photometric=photometric)


def _to_grey(colour: np.ndarray, name: str) -> np.ndarray:
    if colour.shape[-1] == 1:
        return colour[..., 0]
    # Grey stored as RGB (equal channels) loses nothing; warn only when real colour content is dropped.
    if not (np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])):
        warnings.warn(f"{name}: colour (RGB) image converted to grey", ColorImageWarning, stacklevel=4)
    return cv2.cvtColor(np.ascontiguousarray(colour), cv2.COLOR_RGB2GRAY)


def _minmax(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr, dtype=np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)
