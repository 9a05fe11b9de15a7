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
from cxrlab.io.raster import decode_raster, open_raster
from cxrlab.utils import atomic_write_bytes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MIN_SIZE_DEFAULT = 32


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
    """A binary mask as uint8 {0, 1} (any non-zero pixel is foreground)."""
    data = _read_bytes(path)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:  # formats OpenCV lacks (GIF masks of the SCR database) go through Pillow
        arr = np.asarray(open_raster(data, str(path)).convert("L"))
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2) if arr.shape[2] >= 3 else arr[..., 0]
    mask = (arr > 0).astype(np.uint8)
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
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
            if len(head) >= 24 and head.startswith(PNG_MAGIC) and head[12:16] == b"IHDR":
                width, height = struct.unpack(">II", head[16:24])
                return int(height), int(width)
    except OSError as exc:
        raise InputError(path, f"cannot open: {exc.strerror or exc}") from exc
    if sniff(head) == "dicom" or path.suffix.lower() in {".dcm", ".dicom"}:
        from cxrlab.io.dicom import read_dicom_header

        ds = read_dicom_header(path)
        return int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception as exc:
        raise InputError(path, f"not a readable image header: {exc}") from exc
    return height, width


def _read_bytes(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(path, "file does not exist") from None
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from exc
