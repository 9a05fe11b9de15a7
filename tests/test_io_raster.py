"""PNG / JPEG reading, masks, atomic PNG writing."""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
import pytest
from PIL import Image

from cxrlab.errors import InputError
from cxrlab.io import ColorImageWarning, image_size, read_image, read_image_bytes, read_mask, write_png


def gradient(h: int = 64, w: int = 96) -> np.ndarray:
    return np.tile(np.linspace(0, 1, w, dtype=np.float32), (h, 1))


def test_png_8bit_roundtrip(tmp_path):
    write_png(tmp_path / "a.png", gradient())
    img, header = read_image(tmp_path / "a.png")
    assert img.dtype == np.float32 and img.shape == (64, 96)
    assert header.format == "png" and header.bits_stored == 8
    np.testing.assert_allclose(img, gradient(), atol=1 / 255)


def test_png_16bit_keeps_precision(tmp_path):
    arr = (gradient() * 65535).astype(np.uint16)
    write_png(tmp_path / "b.png", arr)
    img, header = read_image(tmp_path / "b.png")
    assert header.bits_stored == 16
    np.testing.assert_allclose(img, arr / 65535.0, atol=1e-6)
    assert len(np.unique(img)) > 90  # more levels than one row of 8-bit would need
    twelve = (gradient() * 4095).astype(np.uint16)  # 12-bit detector data stored in a 16-bit PNG
    write_png(tmp_path / "c.png", twelve)
    img, header = read_image(tmp_path / "c.png")
    assert header.bits_stored == 12 and img.max() == 1.0
    np.testing.assert_allclose(img, twelve / 4095.0, atol=1e-6)


def test_jpeg_and_extension_is_ignored(tmp_path):
    buf = io.BytesIO()
    Image.fromarray((gradient() * 255).astype(np.uint8)).save(buf, format="JPEG", quality=95)
    (tmp_path / "x.png").write_bytes(buf.getvalue())  # a JPEG named .png
    img, header = read_image(tmp_path / "x.png")
    assert header.format == "jpeg"
    assert abs(float(img.mean()) - 0.5) < 0.02


def test_rgb_colour_warns_and_grey_rgb_does_not(tmp_path):
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = 200  # red
    with pytest.warns(ColorImageWarning, match="converted to grey"):
        img, header = read_image_bytes(_png_bytes(rgb), "red.png")
    assert header.photometric == "RGB" and 0.2 < img.mean() < 0.3  # luminance of red
    grey_rgb = np.repeat((gradient(64, 64) * 255).astype(np.uint8)[..., None], 3, axis=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ColorImageWarning)
        img, _ = read_image_bytes(_png_bytes(grey_rgb), "grey.png")
    assert img.shape == (64, 64)


def test_truncated_png_and_garbage(tmp_path):
    write_png(tmp_path / "t.png", np.random.default_rng(0).random((128, 128)))
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="t.png.*(truncated|corrupt)"):
        read_image(tmp_path / "t.png")
    (tmp_path / "g.png").write_bytes(b"hello, not an image at all")
    with pytest.raises(InputError, match="g.png.*not a readable image"):
        read_image(tmp_path / "g.png")
    with pytest.raises(InputError, match="missing.png.*does not exist"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "short.png").write_bytes(data[:20])  # header cut inside IHDR
    with pytest.raises(InputError, match="short.png"):
        image_size(tmp_path / "short.png")


def test_decompression_bomb_and_min_size(tmp_path):
    write_png(tmp_path / "big.png", np.zeros((300, 300), np.uint8))
    with pytest.raises(InputError, match="big.png.*decompression bomb"):
        read_image(tmp_path / "big.png", max_pixels=50_000)
    with pytest.raises(InputError, match="smaller than the minimum side of 512"):
        read_image(tmp_path / "big.png", min_size=512)


def test_mask_binary_and_shape_check(tmp_path):
    m = np.zeros((40, 50), np.uint8)
    m[10:20, 5:25] = 1
    write_png(tmp_path / "m.png", m, mask=True)
    assert cv2.imread(str(tmp_path / "m.png"), cv2.IMREAD_UNCHANGED).max() == 255  # on-disk 0/255
    mask = read_mask(tmp_path / "m.png", expected_shape=(40, 50))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    np.testing.assert_array_equal(mask, m)
    with pytest.raises(InputError, match="m.png.*mask size 50x40 differs from its image 60x40"):
        read_mask(tmp_path / "m.png", expected_shape=(40, 60))
    assert image_size(tmp_path / "m.png") == (40, 50)


def test_write_png_is_atomic(tmp_path, monkeypatch):
    write_png(tmp_path / "keep.png", gradient())
    before = (tmp_path / "keep.png").read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("pathlib.Path.write_bytes", broken)
    with pytest.raises(RuntimeError):
        write_png(tmp_path / "keep.png", np.zeros((64, 64), np.float32))
    monkeypatch.undo()
    assert (tmp_path / "keep.png").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]  # no temp file left behind


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
