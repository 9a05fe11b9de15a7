"""The bad-input sweep: one table of bad inputs (files, manifests, recipes, run directories, service requests)
across the Python API, the installed ``cxrlab`` console script and the HTTP service, each with the outcome it
must get, all driven by one parametrised test.

Every refusal must be a :class:`~cxrlab.errors.CxrlabError` subclass whose message names the file / field and
the reason (API), exit code 2 and that sentence with no traceback (CLI), or a 4xx JSON error with that reason
(service). Some inputs a serious reader accepts (16-bit PNG, colour PNG, a JPEG named ``.png``): those cases
check the pixels that come back. Cases under ``atomic-*`` check that a write that fails or is interrupted leaves
the earlier file byte for byte as it was.

``CASES`` is the table; ``docs/reliability.md`` is generated from it by ``bench/reliability_table.py`` (which runs
this file with ``CXRLAB_RELIABILITY_JSON`` set to record what each case observed), and
``test_reliability_doc_lists_every_case`` keeps the two from drifting apart.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import subprocess
import sys
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from cxrlab.errors import CxrlabError, InputError

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "reliability.md"
CLI = Path(sys.executable).parent / "cxrlab"  # the installed console script, as a user runs it
OBSERVED: dict[str, dict[str, Any]] = {}


# --- the case table ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One bad input. ``expect``: an exception class name (API), ``accepted`` / ``reported`` (API), ``exit N``
    (CLI) or ``HTTP N`` (service); ``match``: a substring of the message (whitespace-normalised)."""

    id: str
    surface: str                      # "api" | "cli" | "service"
    bad_input: str                    # one line for the table
    does: str                         # what cxrlab does with it, for the table
    expect: str
    match: str
    run: Callable[["Ctx"], Any] = field(repr=False, compare=False)


@dataclass
class Ctx:
    tmp: Path
    request: pytest.FixtureRequest
    monkeypatch: pytest.MonkeyPatch

    @property
    def runs(self) -> dict[str, Path]:
        return self.request.getfixturevalue("service_runs")

    @property
    def client(self):
        return self.request.getfixturevalue("bad_input_client")

    def manifest(self, text: str, name: str = "manifest.csv") -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def image(self, name: str = "image.png", size: int = 64) -> Path:
        write_grey_png(self.tmp / name, size)
        return self.tmp / name


@dataclass(frozen=True)
class Reported:
    """An API call that returns issues instead of raising (``validate_manifest``)."""

    text: str


# --- input builders -----------------------------------------------------------------------------------------

def grey(size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return ((xx + yy) * (255.0 / (2 * size - 2))).astype(np.uint8)


def write_grey_png(path: Path, size: int = 64) -> Path:
    cv2.imwrite(str(path), grey(size))
    return path


def png_bytes(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def dicom_bytes(*, frames: int = 1, modality: str | None = "DX", pixels: bool = True, size: int = 128,
                **tags: Any) -> bytes:
    """A DX radiograph from the service's sample encoder, then altered (frames, modality, tags, no pixels)."""
    from cxrlab.serve.samples import encode_dicom

    ds = pydicom.dcmread(io.BytesIO(encode_dicom(grey(size) / 255.0)))
    if modality is None:
        del ds.Modality
    else:
        ds.Modality = modality
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.PixelData = ds.PixelData * frames
    for key, value in tags.items():
        setattr(ds, key, value)
    if not pixels:
        del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def noise_png(size: int) -> bytes:
    return png_bytes(np.random.default_rng(0).integers(0, 255, (size, size), np.uint8))


def truncate_bytes(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def write(ctx: Ctx, name: str, data: bytes) -> Path:
    path = ctx.tmp / name
    path.write_bytes(data)
    return path


def copy_run(ctx: Ctx, role: str) -> Path:
    import shutil

    return Path(shutil.copytree(ctx.runs[role], ctx.tmp / role))


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def unchanged_after(path: Path, action: Callable[[], Any]) -> Any:
    """Run ``action``, which must fail; then check ``path`` is byte-identical and no temporary file is left."""
    before = path.read_bytes()
    siblings = set(path.parent.iterdir())
    try:
        action()
    except CxrlabError:
        assert path.read_bytes() == before, f"{path} changed by a failed write"
        assert set(path.parent.iterdir()) == siblings, "a temporary file was left behind"
        raise
    except BaseException as exc:  # an interrupt (KeyboardInterrupt, kill) in the middle of a write
        assert path.read_bytes() == before, f"{path} changed by an interrupted write"
        assert set(path.parent.iterdir()) == siblings, "a temporary file was left behind"
        raise InputError(path, f"write interrupted ({type(exc).__name__}); earlier file intact") from None
    raise AssertionError("the write was expected to fail")


MANIFEST_HEAD = "image,patient_id,source_dataset,finding\n"


def two_image_manifest(ctx: Ctx, finding=("normal", "covid19"), extra: str = "") -> Path:
    a, b = ctx.image("a.png"), ctx.image("b.png")
    return ctx.manifest(MANIFEST_HEAD.rstrip("\n") + extra + "\n" +
                        f"{a.name},p1,s,{finding[0]}\n{b.name},p2,s,{finding[1]}\n")


# --- API: images ---------------------------------------------------------------------------------------------

def _read(path: Path, **kw: Any) -> str:
    from cxrlab.io import read_image

    image, header = read_image(path, **kw)
    assert image.dtype == np.float32 and image.ndim == 2
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    return f"{header.format} {image.shape[1]}x{image.shape[0]}, float32 in [0, 1]"


def png_16bit(ctx: Ctx) -> str:
    arr = np.zeros((64, 64), np.uint16)
    arr[0, 0], arr[0, 1], arr[0, 2] = 65535, 32768, 0
    arr[1:] = 1000
    path = write(ctx, "film16.png", png_bytes(arr))
    from cxrlab.io import read_image

    image, header = read_image(path)
    assert header.bits_stored == 16
    np.testing.assert_allclose(image[0, :3], [1.0, 32768 / 65535, 0.0], atol=1e-6)  # rescaled, not clipped
    return _read(path) + ", 65535 -> 1.0"


def png_12bit(ctx: Ctx) -> str:
    arr = np.full((64, 64), 2048, np.uint16)
    arr[0, 0] = 4095
    path = write(ctx, "film12.png", png_bytes(arr))
    from cxrlab.io import read_image

    image, header = read_image(path)
    assert header.bits_stored == 12 and image[0, 0] == 1.0 and abs(image[5, 5] - 2048 / 4095) < 1e-6
    return _read(path) + ", 12-bit data scaled by 4095"


def png_rgb(ctx: Ctx) -> str:
    from cxrlab.io import ColorImageWarning

    rgb = np.stack([grey(), np.full((64, 64), 40, np.uint8), 255 - grey()], axis=-1)
    path = ctx.tmp / "colour.png"
    Image.fromarray(rgb).save(path)
    with pytest.warns(ColorImageWarning, match="colour.png"):
        out = _read(path)
    return out + ", ColorImageWarning"


def png_rgba(ctx: Ctx) -> str:
    rgba = np.stack([grey()] * 3 + [np.full((64, 64), 255, np.uint8)], axis=-1)
    path = ctx.tmp / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    from cxrlab.io import read_image

    image, _ = read_image(path)
    np.testing.assert_allclose(image, grey() / 255.0, atol=1 / 255)  # opaque alpha: the grey values
    return _read(path)


def png_palette(ctx: Ctx) -> str:
    path = ctx.tmp / "palette.png"
    Image.fromarray(grey()).convert("P").save(path)
    from cxrlab.io import read_image

    image, _ = read_image(path)
    np.testing.assert_allclose(image, grey() / 255.0, atol=2 / 255)
    return _read(path)


def jpeg_named_png(ctx: Ctx) -> str:
    path = ctx.tmp / "photo.png"
    Image.fromarray(grey()).save(path, format="JPEG")
    out = _read(path)
    assert out.startswith("jpeg")
    return out


def dicom_bad_window(ctx: Ctx) -> str:
    path = write(ctx, "window.dcm", dicom_bytes(WindowCenter=100, WindowWidth=0))
    from cxrlab.io import read_image

    with pytest.warns(UserWarning, match="invalid window"):
        image, _ = read_image(path)
    assert float(image.max()) == 1.0 and float(image.min()) == 0.0  # the full range, not a flat image
    return "dicom 128x128, float32 in [0, 1], UserWarning: invalid window ignored"


def mask_antialiased(ctx: Ctx) -> str:
    from cxrlab.io import read_mask

    m = np.zeros((40, 50), np.uint8)
    m[10:30, 10:40] = 255
    m[10, 10:40] = 200   # anti-aliased edge rows: 60 grey pixels of 2000 (3 %)
    m[30, 10:40] = 100
    path = write(ctx, "edge_mask.png", png_bytes(m))
    mask = read_mask(path)
    assert set(np.unique(mask)) == {0, 1} and mask[10, 20] == 1 and mask[30, 20] == 0
    return "uint8 {0, 1}, thresholded at half the maximum"


def io_case(id: str, bad: str, does: str, expect: str, match: str, run: Callable[[Ctx], Any]) -> Case:
    return Case(id, "api", bad, does, expect, match, run)


def _read_image(make: Callable[[Ctx], Path], **kw: Any) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> Any:
        from cxrlab.io import read_image

        return read_image(make(ctx), **kw)
    return run


def _dangling(ctx: Ctx) -> Path:
    link = ctx.tmp / "link.png"
    link.symlink_to(ctx.tmp / "moved-away.png")
    return link


def _directory(ctx: Ctx) -> Path:
    (ctx.tmp / "folder.png").mkdir()
    return ctx.tmp / "folder.png"


def _read_mask(make: Callable[[Ctx], Path], shape: tuple[int, int] | None = None) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> Any:
        from cxrlab.io import read_mask

        return read_mask(make(ctx), expected_shape=shape)
    return run


IO_CASES = [
    io_case("png-truncated", "PNG cut in half (interrupted download)", "refused", "InputError",
            "half.png: corrupt or truncated image data",
            _read_image(lambda c: write(c, "half.png", truncate_bytes(noise_png(128))))),
    io_case("png-empty-file", "0-byte .png file", "refused", "InputError", "empty.png: empty file",
            _read_image(lambda c: write(c, "empty.png", b""))),
    io_case("png-16bit", "16-bit grey PNG (values 0-65535)", "accepted, rescaled by its bit depth",
            "accepted", "65535 -> 1.0", png_16bit),
    io_case("png-12bit-in-16bit", "12-bit detector data in a 16-bit PNG", "accepted, scaled by 4095 (not read as "
            "nearly black)", "accepted", "scaled by 4095", png_12bit),
    io_case("png-rgb", "RGB colour PNG", "accepted as grey (ITU-R 601 luma) with a ColorImageWarning; the "
            "service refuses colour", "accepted", "ColorImageWarning", png_rgb),
    io_case("png-rgba", "RGBA PNG (grey + opaque alpha)", "accepted as grey (alpha flattened on black)",
            "accepted", "float32 in [0, 1]", png_rgba),
    io_case("png-palette", "palette (indexed colour) PNG", "accepted as grey through its palette", "accepted",
            "float32 in [0, 1]", png_palette),
    io_case("png-huge-dimensions", "PNG header claiming 100000 x 100000 pixels (decompression bomb)",
            "refused from the header, before decoding", "InputError", "decompression bomb",
            _read_image(lambda c: write(c, "bomb.png", png_claiming(100_000, 100_000)))),
    io_case("png-over-pixel-limit", "PNG header claiming 10000 x 10000 (over the 50 MP default limit)",
            "refused from the header ($CXRLAB_MAX_PIXELS raises the limit)", "InputError",
            "exceeds the limit of 50000000",
            _read_image(lambda c: write(c, "large.png", png_claiming(10_000, 10_000)))),
    io_case("png-tiny", "4 x 4 PNG", "refused: below the minimum side", "InputError",
            "image of 4x4 is smaller than the minimum side of 32 px",
            _read_image(lambda c: write(c, "tiny.png", png_bytes(grey(4))))),
    io_case("jpeg-named-png", "JPEG file named .png", "accepted: the type comes from the content",
            "accepted", "jpeg 64x64", jpeg_named_png),
    io_case("text-named-png", "text file named .png", "refused", "InputError",
            "notes.png: not a readable image: the file holds text",
            _read_image(lambda c: write(c, "notes.png", b"patient list\nname,age\n" * 20))),
    io_case("path-is-directory", "a directory where an image file is expected", "refused", "InputError",
            "folder.png: is a directory, not an image file", _read_image(_directory)),
    io_case("path-dangling-symlink", "dangling symbolic link (unreadable path)", "refused", "InputError",
            "link.png: broken symbolic link", _read_image(_dangling)),
    io_case("path-missing", "image path that does not exist", "refused", "InputError",
            "missing.png: file does not exist", _read_image(lambda c: c.tmp / "missing.png")),
    io_case("path-empty-cell", "empty manifest cell (NaN) passed as an image path", "refused", "InputError",
            "no image path given", _read_image(lambda c: float("nan"))),
    io_case("dicom-no-pixel-data", "DICOM without pixel data (header only)", "refused", "InputError",
            "nopix.dcm [PixelData]: DICOM file has no pixel data",
            _read_image(lambda c: write(c, "nopix.dcm", dicom_bytes(pixels=False)))),
    io_case("dicom-ct", "CT DICOM (Modality CT)", "refused: not a projection radiograph", "InputError",
            "ct.dcm [Modality]: modality CT is not a projection radiograph",
            _read_image(lambda c: write(c, "ct.dcm", dicom_bytes(modality="CT")))),
    io_case("dicom-volume", "3-D volume: 20-frame DICOM without Modality", "refused from the header, before "
            "decoding the volume", "InputError", "vol.dcm [NumberOfFrames]: multi-frame DICOM (20 frames",
            _read_image(lambda c: write(c, "vol.dcm", dicom_bytes(frames=20, modality=None)))),
    io_case("dicom-multiframe", "multi-frame DX DICOM (3 frames)", "refused: not a single radiograph (no frame "
            "is guessed)", "InputError", "multi-frame DICOM (3 frames of 128x128)",
            _read_image(lambda c: write(c, "mf.dcm", dicom_bytes(frames=3)))),
    io_case("dicom-truncated", "DICOM whose pixel data is cut short", "refused", "InputError",
            "cut.dcm: corrupt or truncated pixel data",
            _read_image(lambda c: truncate(write(c, "cut.dcm", dicom_bytes()), 0.6))),
    io_case("dicom-palette-colour", "PALETTE COLOR DICOM", "refused", "InputError",
            "pal.dcm [PhotometricInterpretation]: palette-colour DICOM",
            _read_image(lambda c: write(c, "pal.dcm", dicom_bytes(PhotometricInterpretation="PALETTE COLOR")))),
    io_case("dicom-invalid-window", "DICOM with WindowWidth 0", "accepted: invalid window ignored with a "
            "warning, full range used", "accepted", "invalid window ignored", dicom_bad_window),
    io_case("mask-wrong-size", "lung mask 50x40 for a 60x40 image", "refused", "InputError",
            "mask size 50x40 differs from its image 60x40",
            _read_mask(lambda c: write(c, "m.png", png_bytes(np.zeros((40, 50), np.uint8))), (40, 60))),
    io_case("mask-non-binary", "a grey image given as a mask (non-binary)", "refused: not a binary mask",
            "InputError", "grey_mask.png: not a binary mask",
            _read_mask(lambda c: write(c, "grey_mask.png", png_bytes(grey())))),
    io_case("mask-antialiased", "0/255 mask with anti-aliased (grey) edge pixels", "accepted: thresholded at "
            "half the maximum", "accepted", "thresholded at half", mask_antialiased),
    io_case("mask-truncated", "mask PNG cut in half", "refused", "InputError", "corrupt or truncated",
            _read_mask(lambda c: truncate(write(c, "cutmask.png", png_bytes(grey(128) // 128 * 255))))),
]


# --- API: manifests, labels, splits ------------------------------------------------------------------------

def _load(make: Callable[[Ctx], Path]) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> Any:
        from cxrlab.data.manifest import load_manifest

        return load_manifest(make(ctx))
    return run


def _validate(make: Callable[[Ctx], Path]) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> Any:
        from cxrlab.data.manifest import load_manifest
        from cxrlab.data.validate import errors, validate_manifest

        issues = errors(validate_manifest(load_manifest(make(ctx))))
        assert issues, "validation found nothing"
        return Reported("; ".join(str(i) for i in issues))
    return run


def _table(findings: list[str], column: str = "finding") -> Callable[[Ctx], Any]:
    """The training table of the phantom recipe over a manifest with these labels (rows without a target drop)."""
    def run(ctx: Ctx) -> Any:
        from cxrlab.data.manifest import load_manifest
        from cxrlab.recipes import load_recipe
        from cxrlab.train.data import build_table
        from cxrlab.train.trainer import build_tasks
        from cxrlab.train.inputs import InputPipeline

        rows = [f"{ctx.image(f'{i}.png').name},p{i},s,{v}" for i, v in enumerate(findings)]
        path = ctx.manifest(f"image,patient_id,source_dataset,{column}\n" + "\n".join(rows) + "\n")
        recipe = load_recipe("phantom-diagnosis", ["split.stratify=null"])
        pipeline = InputPipeline(recipe.input)
        table, report = build_table(recipe, [load_manifest(path)], build_tasks(recipe, pipeline),
                                    pipeline.per_image)
        dropped = report["rows_without_target"]
        assert dropped == sum(1 for v in findings if v not in ("normal", "bacterial", "viral", "covid19"))
        assert len(table.df) == len(findings) - dropped
        return f"{len(table.df)} labelled rows kept, {dropped} without a target skipped (metrics.json " \
               f"rows_without_target)"
    return run


def _binary_targets(ctx: Ctx) -> Any:
    from cxrlab.data.manifest import load_manifest
    from cxrlab.tasks import TaskSet

    path = two_image_manifest(ctx)
    df = load_manifest(path).df.assign(went_icu=[0, 2])
    return TaskSet.from_config([{"kind": "binary", "column": "went_icu"}]).targets(df, source=path)


def _split_file(text: str) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> Any:
        from cxrlab.data.splits import load_split

        return load_split(ctx.manifest(text, "split.csv"))
    return run


def _split_two_patients(ctx: Ctx) -> Any:
    from cxrlab.data.splits import split_patients

    df = pd.DataFrame({"image": ["x.png", "x.png", "y.png"], "patient_id": ["p1", "p2", "p3"]})
    return split_patients(df, (0.5, 0.5))


def _split_ratios(ctx: Ctx) -> Any:
    from cxrlab.data.splits import split_patients

    return split_patients(pd.DataFrame({"image": ["a", "b"], "patient_id": ["p1", "p2"]}), (0.5, 0.6))


def _kfold(ctx: Ctx) -> Any:
    from cxrlab.data.splits import kfold_patients

    return kfold_patients(pd.DataFrame({"image": ["a", "b"], "patient_id": ["p1", "p2"]}), k=5)


DATA_CASES = [
    Case("manifest-missing-columns", "api", "manifest without patient_id / source_dataset columns", "refused",
         "InputError", "missing required column(s): patient_id, source_dataset",
         _load(lambda c: c.manifest("image,finding\na.png,normal\n"))),
    Case("manifest-empty-file", "api", "0-byte manifest.csv", "refused", "InputError",
         "manifest.csv: empty file", _load(lambda c: c.manifest(""))),
    Case("manifest-no-rows", "api", "empty manifest (header only)", "refused", "InputError",
         "manifest has no rows", _load(lambda c: c.manifest(MANIFEST_HEAD))),
    Case("manifest-repeated-column", "api", "manifest header naming `image` twice", "refused (pandas would "
         "silently rename it image.1)", "InputError", "column(s) image appear more than once",
         _load(lambda c: c.manifest("image,patient_id,source_dataset,image\na.png,p1,s,b.png\n"))),
    Case("manifest-not-a-table", "api", "a PNG renamed manifest.csv", "refused", "InputError",
         "manifest.csv: not a text table",
         _load(lambda c: write(c, "manifest.csv", png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64),
                                                                                               np.uint8))))),
    Case("manifest-wrong-format", "api", "manifest.xlsx", "refused", "InputError",
         "unsupported manifest format (use .csv or .parquet)", _load(lambda c: c.manifest("x", "manifest.xlsx"))),
    Case("manifest-folder-without-manifest", "api", "a folder with no manifest.csv", "refused", "InputError",
         "folder has no manifest.csv or manifest.parquet", _load(lambda c: c.tmp)),
    Case("manifest-duplicate-rows", "api", "the same image listed twice (validate_manifest)", "reported: every "
         "row, column and reason", "reported", "[row 1, image] error: duplicate image (listed 2 times)",
         _validate(lambda c: c.manifest(MANIFEST_HEAD + f"{c.image('a.png').name},p1,s,normal\n"
                                                        "a.png,p1,s,normal\n"))),
    Case("manifest-missing-image", "api", "manifest row pointing to a missing file (validate_manifest)",
         "reported", "reported", "gone.png [row 0, image] error: image file does not exist",
         _validate(lambda c: c.manifest(MANIFEST_HEAD + "gone.png,p1,s,normal\n"))),
    Case("manifest-empty-patient", "api", "empty patient_id cell (validate_manifest)", "reported", "reported",
         "[row 0, patient_id] error: required value is empty",
         _validate(lambda c: c.manifest(MANIFEST_HEAD + f"{c.image('a.png').name},,s,normal\n"))),
    Case("labels-out-of-range", "api", "went_icu = 2 for a binary (0/1) task", "refused", "InputError",
         "[went_icu]: binary target must be 0/1, found", _binary_targets),
    Case("labels-nan", "api", "NaN (empty) labels in the training manifest", "accepted: those rows have no "
         "target and are skipped, counted in metrics.json", "accepted", "10 labelled rows kept, 2 without a "
         "target skipped", _table(["normal", "covid19"] * 5 + ["", ""])),
    Case("labels-unknown-class", "api", "unknown class name (`pneumonitis`) in `finding`", "accepted: no "
         "target for that row (skipped, counted), never guessed", "accepted", "1 without a target skipped",
         _table(["normal", "covid19"] * 5 + ["pneumonitis"])),
    Case("labels-all-unknown", "api", "no row with a known class name", "refused", "InputError",
         "no row has a target for ['finding']", _table(["pneumonitis", "pneumonitis"])),
    Case("split-patient-in-two-parts", "api", "split table with one patient in train and test", "refused",
         "InputError", "split.csv [split]: 1 patient(s) appear in more than one part: p1 in test, train",
         _split_file("image,patient_id,split\na.png,p1,train\nb.png,p1,test\n")),
    Case("split-unknown-part", "api", "split table with a misspelt part (`tset`)", "refused", "InputError",
         "unknown part name(s) 'tset'", _split_file("image,patient_id,split\na.png,p1,train\nb.png,p2,tset\n")),
    Case("split-image-two-patients", "api", "one image listed under two patient ids, then split", "refused: "
         "it would land in two parts", "InputError", "image(s) listed under more than one patient, first: x.png",
         _split_two_patients),
    Case("split-bad-ratios", "api", "split ratios 0.5 / 0.6", "refused", "ConfigError",
         "split ratios must be 2 or 3 non-negative numbers summing to 1", _split_ratios),
    Case("kfold-too-many-folds", "api", "5-fold split of 2 patients", "refused", "ConfigError",
         "k must be between 2 and the number of patients (2), got 5", _kfold),
]


# --- API: recipes and configs -------------------------------------------------------------------------------

RECIPE = """name: sweep
tasks:
  - kind: diagnosis
train:
  batch_size: 8
"""


def _recipe(text: str | bytes, overrides: tuple[str, ...] = ()) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> Any:
        from cxrlab.recipes import load_recipe

        path = ctx.tmp / "recipe.yaml"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return load_recipe(path, list(overrides))
    return run


def _seg_config(ctx: Ctx) -> Any:
    from cxrlab.anatomy.config import load_config

    return load_config(ctx.manifest("- unet\n- resnet18\n", "seg.yaml"))


def _service_config(ctx: Ctx) -> Any:
    from cxrlab.serve import load_service_config

    return load_service_config(ctx.manifest("models:\n  lung: [unclosed\n", "service.yaml"))


RECIPE_CASES = [
    Case("recipe-unknown-key", "api", "recipe with an unknown key (`train.bogus`)", "refused", "ConfigError",
         "key 'train.bogus': unknown key", _recipe(RECIPE + "  bogus: 1\n")),
    Case("recipe-wrong-type", "api", "recipe value of the wrong type (`batch_size: many`)", "refused",
         "ConfigError", "key 'train.batch_size': Input should be a valid integer",
         _recipe(RECIPE.replace("batch_size: 8", "batch_size: many"))),
    Case("recipe-negative-batch-size", "api", "`--set train.batch_size=-4`", "refused", "ConfigError",
         "key 'train.batch_size': Input should be greater than or equal to 1",
         _recipe(RECIPE, ("train.batch_size=-4",))),
    Case("recipe-infinite-lr", "api", "learning rate `.inf` (YAML infinity)", "refused", "ConfigError",
         "key 'train.stages.0.lr': Input should be a finite number",
         _recipe(RECIPE, ("train.stages=[{epochs: 1, lr: .inf}]",))),
    Case("recipe-not-mapping", "api", "recipe YAML that is a list, not a mapping", "refused", "ConfigError",
         "top level must be a mapping, got list", _recipe("- name\n- tasks\n", ("seed=1",))),
    Case("recipe-malformed-yaml", "api", "malformed YAML recipe", "refused, with line and column", "InputError",
         "recipe.yaml: not valid YAML (line 2, column 4", _recipe("name: [unclosed\n  x: {\n")),
    Case("recipe-binary-file", "api", "binary (non-UTF-8) file given as a recipe", "refused", "InputError",
         "recipe.yaml: not a text (UTF-8) YAML file", _recipe(b"\xff\xfe\x00\x81\x00garbage")),
    Case("recipe-unknown-name", "api", "unknown recipe name", "refused, listing the shipped ones",
         "ConfigError", "unknown recipe 'covid-icu-v2'; shipped:",
         lambda c: __import__("cxrlab.recipes", fromlist=["load_recipe"]).load_recipe("covid-icu-v2")),
    Case("config-not-mapping", "api", "segmentation config YAML that is a list", "refused", "ConfigError",
         "seg.yaml: expected a mapping at the top level", _seg_config),
    Case("config-malformed-yaml", "api", "malformed service config YAML", "refused", "ConfigError",
         "service.yaml: not valid YAML", _service_config),
]


# --- API: run directories and checkpoints ------------------------------------------------------------------

def _load_run(prepare: Callable[[Ctx], Path]) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> Any:
        from cxrlab.train.predict import load_run

        return load_run(prepare(ctx))
    return run


def _segmenter(prepare: Callable[[Ctx], Path]) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> Any:
        from cxrlab.anatomy.predict import LungSegmenter

        return LungSegmenter.from_run(prepare(ctx))
    return run


def _without_recipe(ctx: Ctx) -> Path:
    run = copy_run(ctx, "diagnosis")
    (run / "recipe.yaml").unlink()
    return run


def _truncated_checkpoint(role: str) -> Callable[[Ctx], Path]:
    def prepare(ctx: Ctx) -> Path:
        run = copy_run(ctx, role)
        truncate(run / "checkpoints" / "best.pt", 0.4)
        return run
    return prepare


def _edited_recipe(old: str, new: str) -> Callable[[Ctx], Path]:
    def prepare(ctx: Ctx) -> Path:
        run = copy_run(ctx, "diagnosis")
        text = (run / "recipe.yaml").read_text()
        assert old in text
        (run / "recipe.yaml").write_text(text.replace(old, new, 1))
        return run
    return prepare


def _interrupted_checkpoint_write(ctx: Ctx) -> Any:
    """A checkpoint write killed half-way (as the trainers write them: ``atomic_path``) leaves the run loadable."""
    import torch

    from cxrlab.train.predict import load_run
    from cxrlab.utils import atomic_path

    run = copy_run(ctx, "diagnosis")
    best = run / "checkpoints" / "best.pt"

    def killed_write() -> None:
        with atomic_path(best) as tmp:
            torch.save({"model": {}}, tmp)
            truncate(tmp)
            raise KeyboardInterrupt  # the kill arrives before the rename
    try:
        unchanged_after(best, killed_write)
    except InputError as exc:
        load_run(run)  # still the complete, earlier checkpoint
        raise InputError(best, f"{exc.reason}; the run still loads") from None


RUN_CASES = [
    Case("run-missing-metadata", "api", "run directory without recipe.yaml", "refused", "InputError",
         "not a training run directory (no recipe.yaml)", _load_run(_without_recipe)),
    Case("run-truncated-checkpoint", "api", "run whose checkpoints/best.pt is truncated (interrupted copy)",
         "refused", "InputError", "best.pt: checkpoint is truncated or corrupt",
         _load_run(_truncated_checkpoint("diagnosis"))),
    Case("run-other-version-recipe", "api", "run whose recipe.yaml has a key this version does not know",
         "refused, naming the key and the likely cause", "InputError",
         "not a valid recipe for this cxrlab version (key 'future_option': unknown key)",
         _load_run(_edited_recipe("seed: 0", "seed: 0\nfuture_option: true"))),
    Case("run-weights-do-not-fit", "api", "run whose recipe names another backbone than its checkpoint holds",
         "refused, summarising missing/unexpected weights", "InputError",
         "checkpoint weights do not fit the model recipe.yaml describes",
         _load_run(_edited_recipe("backbone: pasa_cnn", "backbone: resnet18"))),
    Case("run-wrong-kind", "api", "a lung segmentation run given to load_run", "refused", "InputError",
         "is a lung segmentation run (use it as --lung-model), not a training run",
         _load_run(lambda c: c.runs["lung"])),
    Case("export-not-a-run", "api", "`export_run` on a folder that is not a run directory", "refused",
         "ConfigError", "no recipe.yaml; not a cxrlab run directory",
         lambda c: __import__("cxrlab.export.runs", fromlist=["export_run"]).export_run(c.tmp)),
    Case("segmenter-truncated-checkpoint", "api", "segmentation run with a truncated checkpoint", "refused",
         "InputError", "best.pt: checkpoint is truncated or corrupt", _segmenter(_truncated_checkpoint("lung"))),
    Case("segmenter-wrong-kind", "api", "a diagnosis run given as the lung model", "refused", "InputError",
         "is a training (classification) run, not a lung segmentation run",
         _segmenter(lambda c: c.runs["diagnosis"])),
]


# --- API: nothing already written is lost or half-written ----------------------------------------------------

def _existing_manifest(ctx: Ctx, name: str = "manifest.csv") -> Path:
    from cxrlab.data.manifest import Manifest, save_manifest

    path = ctx.tmp / name
    save_manifest(Manifest(pd.DataFrame({"image": [str(ctx.image("a.png"))], "patient_id": ["p1"],
                                         "source_dataset": ["s"]})), path)
    return path


def _save_unserialisable(ctx: Ctx) -> Any:
    from cxrlab.data.manifest import save_manifest

    path = _existing_manifest(ctx, "manifest.parquet")
    bad = pd.DataFrame({"image": ["b.png"], "patient_id": ["p2"], "source_dataset": ["s"], "x": [object()]})
    return unchanged_after(path, lambda: save_manifest(bad, path))


def _save_disk_full(ctx: Ctx) -> Any:
    from cxrlab.data.manifest import save_manifest

    path = _existing_manifest(ctx)
    real = pd.DataFrame.to_csv

    def half_then_full(self, target, *args, **kwargs):
        Path(target).write_text("image,patient_id,sou")  # a partial write, then the disk is full
        raise OSError(28, "No space left on device")
    ctx.monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_full)
    try:
        return unchanged_after(path, lambda: save_manifest(pd.DataFrame({"image": ["c.png"], "patient_id": ["p"],
                                                                         "source_dataset": ["s"]}), path))
    finally:
        ctx.monkeypatch.setattr(pd.DataFrame, "to_csv", real)


def _save_leaking_split(ctx: Ctx) -> Any:
    from cxrlab.data.splits import save_split

    path = ctx.manifest("image,patient_id,split\na.png,p1,train\n", "split.csv")
    leak = pd.DataFrame({"image": ["a.png", "b.png"], "patient_id": ["p1", "p1"], "split": ["train", "test"]})
    return unchanged_after(path, lambda: save_split(leak, path))


def _write_png_bad(ctx: Ctx) -> Any:
    from cxrlab.io import write_png

    path = ctx.image("mask.png")
    return unchanged_after(path, lambda: write_png(path, np.zeros((8, 8), np.int64)))


ATOMIC_CASES = [
    Case("atomic-save-manifest-unwritable", "api", "save_manifest of a value Parquet cannot hold, over an "
         "existing manifest", "refused; the earlier manifest is unchanged, no temporary file left", "InputError",
         "cannot write manifest (earlier file, if any, left unchanged)", _save_unserialisable),
    Case("atomic-save-manifest-disk-full", "api", "disk full half-way through save_manifest", "refused; the "
         "earlier manifest is unchanged", "InputError", "No space left on device", _save_disk_full),
    Case("atomic-save-split-leak", "api", "save_split of a leaking split over an existing split.csv", "refused "
         "before writing; the earlier split.csv is unchanged", "InputError", "appear in more than one part",
         _save_leaking_split),
    Case("atomic-write-png-bad-dtype", "api", "write_png of an int64 array over an existing PNG", "refused; "
         "the earlier PNG is unchanged", "InputError", "cannot write array of dtype int64 as PNG",
         _write_png_bad),
    Case("atomic-checkpoint-write-killed", "api", "a checkpoint write killed before it completes", "the earlier "
         "checkpoint is intact and the run still loads", "InputError", "earlier file intact; the run still loads",
         _interrupted_checkpoint_write),
]


# --- CLI: the installed console script -----------------------------------------------------------------------

def _cli(build: Callable[[Ctx], list[str]]) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> Any:
        args = [str(a) for a in build(ctx)]
        env = {**os.environ, "COLUMNS": "1000", "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
        proc = subprocess.run([str(CLI), *args], cwd=ctx.tmp, capture_output=True, text=True, timeout=120,
                              env=env)
        return proc
    return run


def _predict_args(ctx: Ctx, run_role: str, image: Path) -> list[str]:
    return ["predict", ctx.runs[run_role], image, "--out", ctx.tmp / "pred.csv"]


CLI_CASES = [
    Case("cli-validate-missing-columns", "cli", "`cxrlab data validate` on a manifest without required columns",
         "refused", "exit 2", "missing required column(s): patient_id, source_dataset",
         _cli(lambda c: ["data", "validate", c.manifest("image,finding\na.png,normal\n")])),
    Case("cli-validate-duplicates", "cli", "`cxrlab data validate` on duplicated image rows", "every issue "
         "printed; exit 1 (invalid manifest)", "exit 1", "duplicate image (listed 2 times)",
         _cli(lambda c: ["data", "validate", c.manifest(MANIFEST_HEAD + f"{c.image('a.png').name},p1,s,normal\n"
                                                                        "a.png,p1,s,normal\n")])),
    Case("cli-stats-empty-manifest", "cli", "`cxrlab data stats` on a header-only manifest", "refused",
         "exit 2", "manifest has no rows", _cli(lambda c: ["data", "stats", c.manifest(MANIFEST_HEAD)])),
    Case("cli-stats-split-leak", "cli", "`cxrlab data stats --split` with a patient in two parts", "refused",
         "exit 2", "1 patient(s) appear in more than one part: p1 in test, train",
         _cli(lambda c: ["data", "stats", two_image_manifest(c), "--split",
                         c.manifest("image,patient_id,split\na.png,p1,train\nb.png,p1,test\n", "split.csv")])),
    Case("cli-predict-truncated-png", "cli", "`cxrlab predict` on a truncated PNG", "refused", "exit 2",
         "half.png: corrupt or truncated image data",
         _cli(lambda c: _predict_args(c, "diagnosis", write(c, "half.png", truncate_bytes(noise_png(128)))))),
    Case("cli-predict-wrong-run", "cli", "`cxrlab predict` given a lung segmentation run", "refused", "exit 2",
         "is a lung segmentation run", _cli(lambda c: _predict_args(c, "lung", c.image()))),
    Case("cli-train-negative-batch", "cli", "`cxrlab train ... --set train.batch_size=-1`", "refused",
         "exit 2", "key 'train.batch_size': Input should be greater than or equal to 1",
         _cli(lambda c: ["train", "phantom-diagnosis", "--data", two_image_manifest(c), "--out", c.tmp / "run",
                         "--set", "train.batch_size=-1"])),
    Case("cli-segment-truncated-checkpoint", "cli", "`cxrlab segment predict` with a truncated checkpoint",
         "refused", "exit 2", "checkpoint is truncated or corrupt",
         _cli(lambda c: ["segment", "predict", c.image(), "--run", _truncated_checkpoint("lung")(c), "--out",
                         c.tmp / "masks"])),
    Case("cli-recipes-show-malformed", "cli", "`cxrlab recipes show` on malformed YAML", "refused", "exit 2",
         "not valid YAML (line 2, column 4",
         _cli(lambda c: ["recipes", "show", c.manifest("name: [unclosed\n  x: {\n", "bad.yaml")])),
]


# --- service -------------------------------------------------------------------------------------------------

def _post(files: Any = None, params: str = "", path: str = "/v1/analyze", **kw: Any) -> Callable[[Ctx], Any]:
    def run(ctx: Ctx) -> Any:
        payload = files(ctx) if callable(files) else files
        return ctx.client.post(path + params, files=payload, **kw)
    return run


def _upload(data: Callable[[Ctx], bytes] | bytes) -> Callable[[Ctx], Any]:
    return lambda c: {"file": ("upload.bin", data(c) if callable(data) else data)}


def _phantom_png(ctx: Ctx) -> bytes:
    return png_bytes(grey(128))


SERVICE_CASES = [
    Case("svc-non-image", "service", "upload of a text file", "refused before any decoder", "HTTP 415",
         "unsupported file type: expected PNG, JPEG or DICOM", _post(_upload(b"name,age\nDoe,64\n" * 10))),
    Case("svc-over-size-limit", "service", "upload over the size limit (360 kB > 200 kB)", "refused before "
         "the body is read", "HTTP 413", "bytes exceeds the upload limit", _post(_upload(lambda c: noise_png(600)))),
    Case("svc-no-file-field", "service", "POST /v1/analyze without a file field", "refused", "HTTP 422",
         "file: Field required", _post(None)),
    Case("svc-bad-parameter", "service", "`?heatmap=maybe`", "refused", "HTTP 422",
         "heatmap: Input should be a valid boolean", _post(_upload(_phantom_png), "?heatmap=maybe")),
    Case("svc-unknown-endpoint", "service", "POST /v1/analyse (misspelt endpoint)", "refused", "HTTP 404",
         "Not Found", _post(_upload(_phantom_png), path="/v1/analyse")),
    Case("svc-empty-upload", "service", "0-byte upload", "refused", "HTTP 422", "empty upload",
         _post(_upload(b""))),
    Case("svc-truncated-png", "service", "truncated PNG upload", "refused", "HTTP 422",
         "corrupt or truncated image data", _post(_upload(lambda c: truncate_bytes(noise_png(128))))),
    Case("svc-huge-dimensions", "service", "PNG header claiming 100000 x 100000", "refused from the header",
         "HTTP 413", "refused as a decompression bomb", _post(_upload(png_claiming(100_000, 100_000)))),
    Case("svc-over-pixel-limit", "service", "PNG header claiming 3000 x 3000 (service limit 4 MP)", "refused "
         "from the header", "HTTP 413", "image of 3000x3000 pixels exceeds the limit of 4000000 pixels",
         _post(_upload(png_claiming(3000, 3000)))),
    Case("svc-tiny-image", "service", "16 x 16 PNG", "refused", "HTTP 422", "smaller than 64 px",
         _post(_upload(png_bytes(grey(16))))),
    Case("svc-colour-photo", "service", "RGB colour photograph", "refused: not a chest radiograph", "HTTP 422",
         "colour image: not a chest radiograph",
         _post(_upload(png_bytes(np.stack([grey(128), 255 - grey(128), np.full((128, 128), 90, np.uint8)], -1))))),
    Case("svc-ct-dicom", "service", "CT DICOM upload", "refused", "HTTP 422",
         "modality CT is not a projection radiograph", _post(_upload(lambda c: dicom_bytes(modality="CT")))),
    Case("svc-multiframe-dicom", "service", "3-frame DICOM upload", "refused", "HTTP 422",
         "multi-frame DICOM (3 frames", _post(_upload(lambda c: dicom_bytes(frames=3)))),
    Case("svc-dicom-no-pixels", "service", "DICOM upload without pixel data", "refused", "HTTP 422",
         "DICOM file has no pixel data", _post(_upload(lambda c: dicom_bytes(pixels=False)))),
    Case("svc-batch-too-many", "service", "batch of 3 files over the batch limit of 2", "refused", "HTTP 413",
         "3 files exceed the batch limit of 2",
         _post(lambda c: [("files", (f"{i}.png", _phantom_png(c))) for i in range(3)], path="/v1/analyze/batch")),
    Case("svc-unknown-result", "service", "GET of an unknown result id", "refused", "HTTP 404",
         "unknown or expired result id", lambda c: c.client.get("/v1/results/" + "0" * 32)),
]

CASES: list[Case] = IO_CASES + DATA_CASES + RECIPE_CASES + RUN_CASES + ATOMIC_CASES + CLI_CASES + SERVICE_CASES


# --- fixtures and the one test --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_input_client(service_runs, tmp_path_factory):
    from fastapi.testclient import TestClient

    from cxrlab.serve import create_app, load_service_config
    from cxrlab.serve.config import LimitsConfig

    limits = LimitsConfig(max_upload_bytes=200_000, max_pixels=4_000_000, min_side=64, max_batch=2)
    cfg = load_service_config(service_runs["config"]).model_copy(
        update={"limits": limits, "heatmap": False, "store_dir": tmp_path_factory.mktemp("store")})
    with TestClient(create_app(cfg)) as client:
        yield client


@pytest.fixture(scope="module", autouse=True)
def _record_observed():
    """With ``CXRLAB_RELIABILITY_JSON`` set, write what every case observed (for bench/reliability_table.py)."""
    yield
    target = os.environ.get("CXRLAB_RELIABILITY_JSON")
    if target:
        Path(target).write_text(json.dumps(OBSERVED, indent=1, sort_keys=True) + "\n")


def _squash(text: str) -> str:
    return " ".join(text.split())


def _observe(case: Case, ctx: Ctx) -> tuple[str, str]:
    """``(outcome, message)`` as a user sees them; asserts the surface's rules (no traceback, no stray class)."""
    if case.surface == "cli":
        proc = case.run(ctx)
        output = proc.stdout + proc.stderr
        assert "Traceback" not in output, output[-3000:]
        return f"exit {proc.returncode}", _squash(output)
    if case.surface == "service":
        response = case.run(ctx)
        body = response.json()
        assert response.status_code < 500, body
        reason = body.get("error", {}).get("reason") if isinstance(body, dict) and "error" in body else \
            body.get("detail", body) if isinstance(body, dict) else body
        return f"HTTP {response.status_code}", _squash(str(reason))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the bomb cases expect it
            value = case.run(ctx)
    except CxrlabError as exc:
        return type(exc).__name__, _squash(str(exc))
    if isinstance(value, Reported):
        return "reported", _squash(value.text)
    return "accepted", _squash(str(value))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    outcome, message = _observe(case, Ctx(tmp_path, request, monkeypatch))
    roots = {str(tmp_path), str(tmp_path.resolve()), str(tmp_path.parent), str(tmp_path.parent.resolve())}
    for root in sorted(roots, key=len, reverse=True):  # this case's folder, then the session's (the runs)
        message = message.replace(root, "…")
    OBSERVED[case.id] = {"outcome": outcome, "message": message}
    assert outcome == case.expect, f"{case.id}: expected {case.expect}, got {outcome}: {message}"
    assert _squash(case.match) in message, f"{case.id}: {case.match!r} not in {message!r}"


def test_case_table_is_well_formed():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert len(CASES) >= 40
    assert {c.surface for c in CASES} == {"api", "cli", "service"}
    for c in CASES:
        assert re.fullmatch(r"[a-z0-9-]+", c.id), c.id
        if c.surface == "api":
            assert c.expect in {"accepted", "reported"} or issubclass(getattr(sys.modules["cxrlab.errors"],
                                                                              c.expect), CxrlabError), c.id
        else:
            assert re.fullmatch(r"(exit|HTTP) \d+", c.expect), c.id


def test_reliability_doc_lists_every_case():
    """docs/reliability.md is generated from CASES (bench/reliability_table.py): the doc must list each case
    id exactly once and nothing else, so the doc and the sweep cannot drift apart."""
    text = DOC.read_text()
    in_doc = re.findall(r"^\| `([a-z0-9-]+)` \|", text, flags=re.M)
    assert sorted(in_doc) == sorted(c.id for c in CASES), "re-run: python bench/reliability_table.py"
    for c in CASES:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{c.id}` |"))
        assert c.expect.split()[-1] in row, f"{c.id}: the doc's row does not show {c.expect}"
