"""One entry point for pixels: the file type is decided from the content (magic bytes), never the extension."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

from cxrlab.errors import InputError
from cxrlab.io.dicom import RADIOGRAPH_MODALITIES, _check_size, decode_dicom, max_pixels_default, parse_dicom
from cxrlab.io.header import ImageHeader
from cxrlab.io.raster import _what_it_is, decode_raster, open_raster
from cxrlab.utils import atomic_write_bytes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MIN_SIZE_DEFAULT = 32
# Share of grey (neither 0 nor maximum) pixels above which a "mask" is refused: anti-aliased or JPEG edges of a
# real mask stay far below it, an image or a label map given as a mask is far above.
MASK_MAX_GREY_FRACTION = 0.1


def sniff(data: bytes) -> str:
    """'dicom', 'png', 'jpeg' or 'other' from the first bytes."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    return "other"


def read_image_bytes(data: bytes, name: str = "<bytes>", *, max_pixels: int | None = None,
                     min_size: int = MIN_SIZE_DEFAULT,
                     allowed_modalities: frozenset[str] = RADIOGRAPH_MODALITIES) -> tuple[np.ndarray, ImageHeader]:
    """Decode an image held in memory (an upload, a blob): float32 HxW in [0, 1] and its header."""
    max_pixels = max_pixels_default() if max_pixels is None else max_pixels
    if not data:
        raise InputError(name, "empty file")
    kind = sniff(data)
    if kind == "dicom":
        ds = parse_dicom(data, name)
        return decode_dicom(ds, name, max_pixels=max_pixels, min_size=min_size,
                            allowed_modalities=allowed_modalities)
    try:
        img = open_raster(data, name)
    except InputError:
        if kind == "other" and name.lower().endswith((".dcm", ".dicom")):  # DICOM without the 128-byte preamble
            ds = parse_dicom(data, name)
            return decode_dicom(ds, name, max_pixels=max_pixels, min_size=min_size,
                                allowed_modalities=allowed_modalities)
        raise
    cols, rows = img.size
    _check_size(rows, cols, name, max_pixels=max_pixels, min_size=min_size)
    return decode_raster(img, name)


def read_image(path: str | os.PathLike, *, max_pixels: int | None = None, min_size: int = MIN_SIZE_DEFAULT,
               allowed_modalities: frozenset[str] = RADIOGRAPH_MODALITIES) -> tuple[np.ndarray, ImageHeader]:
    """Read a PNG / JPEG / DICOM radiograph: ``(float32 HxW in [0, 1], ImageHeader)``.

    Errors are :class:`~cxrlab.errors.InputError` naming the file and the reason (missing, truncated,
    no pixel data, non-radiograph modality, unsupported transfer syntax, too small, too many pixels).
    """
    return read_image_bytes(_read_bytes(path), str(path), max_pixels=max_pixels, min_size=min_size,
                            allowed_modalities=allowed_modalities)


def read_mask(path: str | os.PathLike, expected_shape: tuple[int, int] | None = None) -> np.ndarray:
    """A binary mask as uint8 {0, 1}.

    Masks on disk are 0/255 (or 0/1); values are thresholded at half the file's maximum, so anti-aliased or
    JPEG-compressed edges go to the nearer side. A file whose pixels are mostly neither 0 nor the maximum is
    not a mask (an image or a label map given by mistake) and is refused.
    """
    data = _read_bytes(path)
    if not data:
        raise InputError(path, "empty file")
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:  # formats OpenCV lacks (GIF masks of the SCR database) go through Pillow
        img = open_raster(data, str(path))
        try:
            arr = np.asarray(img.convert("L"))
        except Exception as exc:  # truncated data raises OSError("image file is truncated ...")
            raise InputError(path, f"corrupt or truncated mask data: {exc}") from exc
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    top = int(arr.max(initial=0))
    if top > 0:
        between = float(np.mean((arr > 0) & (arr < top)))
        if between > MASK_MAX_GREY_FRACTION:
            raise InputError(path, f"not a binary mask: {between:.0%} of its pixels are neither 0 nor {top} "
                                   f"(an image or a label map instead of a 0/255 mask?)")
    mask = (arr.astype(np.float32) * 2 >= top).astype(np.uint8) if top > 0 else np.zeros(arr.shape, np.uint8)
    if expected_shape is not None and tuple(mask.shape) != tuple(expected_shape[:2]):
        raise InputError(path, f"mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
                               f"{expected_shape[1]}x{expected_shape[0]}")
    return mask


def write_png(path: str | os.PathLike, array: np.ndarray, *, mask: bool = False) -> Path:
    """Write a PNG atomically.

    float images in [0, 1] -> 8-bit; uint8 / uint16 as they are; bool arrays or ``mask=True`` -> 0/255
    (the on-disk mask convention).
    """
    arr = np.asarray(array)
    if mask or arr.dtype == bool:
        arr = np.where(arr > 0, 255, 0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = np.round(np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0).astype(np.uint8)
    elif arr.dtype not in (np.uint8, np.uint16):
        raise InputError(path, f"cannot write array of dtype {arr.dtype} as PNG")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise InputError(path, "PNG encoding failed")
    atomic_write_bytes(path, buf.tobytes())
    return Path(path)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` from the header only (PNG IHDR, Pillow lazily, or the DICOM Rows/Columns)."""
    path = _check_path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
            if len(head) >= 24 and head.startswith(PNG_MAGIC) and head[12:16] == b"IHDR":
                width, height = struct.unpack(">II", head[16:24])
                return int(height), int(width)
    except FileNotFoundError:
        raise InputError(path, "file does not exist") from None
    except OSError as exc:
        raise InputError(path, f"cannot open: {exc.strerror or exc}") from exc
    if not head:
        raise InputError(path, "empty file")
    if sniff(head) == "dicom" or path.suffix.lower() in {".dcm", ".dicom"}:
        from cxrlab.io.dicom import read_dicom_header

        ds = read_dicom_header(path)
        return int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
    except Image.UnidentifiedImageError:
        with open(path, "rb") as fh:
            raise InputError(path, f"not a readable image header: {_what_it_is(fh.read(4096))}") from None
    except Exception as exc:
        raise InputError(path, f"not a readable image header: {exc}") from exc
    return height, width


def _check_path(path: object) -> Path:
    """A file path, or an ``InputError`` saying why it cannot be one (empty cell, directory, broken link)."""
    if path is None or (isinstance(path, float) and np.isnan(path)) or str(path).strip() == "":
        raise InputError("<no path>", "no image path given (empty manifest cell?)")
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(repr(path), f"not a file path ({type(path).__name__})")
    p = Path(path)
    if p.is_dir():
        raise InputError(p, "is a directory, not an image file")
    if p.is_symlink() and not p.exists():
        raise InputError(p, f"broken symbolic link (points to {os.readlink(p)}, which does not exist)")
    return p


def _read_bytes(path: str | os.PathLike) -> bytes:
    p = _check_path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "file does not exist") from None
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from exc
