"""``pack_manifest(manifest, out)``: a compact, self-contained, lossless copy of a manifest's images and masks.

For moving a dataset to another machine (an accelerator with a transfer limit, a cluster node): every 8-bit
image and mask is re-encoded as lossless WebP (~10-15 % smaller than PNG for radiographs, far smaller for
masks), decoded again and compared pixel for pixel with its original; anything WebP cannot hold (16-bit PNG,
DICOM, other formats) is copied byte for byte. ``out/manifest.csv`` lists the copies with paths relative to
``out``, every other column unchanged, so splits computed from it are the splits of the original rows.

>>> pack_manifest("runs/severity_bench/data/covidquex.csv", "gpu_data/covidquex",
...               columns=["mask_lungs", "mask_disease"])
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.data.manifest import Manifest, load_manifest, save_manifest
from cxrlab.errors import InputError
from cxrlab.utils import atomic_path

PACKED_MANIFEST = "manifest.csv"


def _has(value: object) -> bool:
    return isinstance(value, str) and value.strip() != ""


def pack_file(src: Path, dst_stem: Path) -> Path:
    """``src`` as lossless WebP at ``dst_stem.webp`` when it is an 8-bit raster, else a byte copy (its own
    suffix); the WebP is decoded again and must equal the original exactly."""
    data = np.fromfile(src, np.uint8)
    if data.size == 0:
        raise InputError(src, "empty file")
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if src.suffix.lower() != ".dcm" else None
    dst_stem.parent.mkdir(parents=True, exist_ok=True)
    if arr is None or arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] == 2):
        return _copy(src, dst_stem.with_suffix(src.suffix))
    ok, buf = cv2.imencode(".webp", arr, [cv2.IMWRITE_WEBP_QUALITY, 101])  # quality > 100 = lossless
    back = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else None
    if back is not None and arr.ndim == 2 and back.ndim == 3:  # WebP stores grey as three equal channels
        back = back[..., 0] if (back[..., 0] == back[..., 1]).all() and (back[..., 0] == back[..., 2]).all() \
            else None
    if back is None or back.shape != arr.shape or not np.array_equal(back, arr):
        return _copy(src, dst_stem.with_suffix(src.suffix))  # not lossless in WebP (e.g. alpha): the original
    dst = dst_stem.with_suffix(".webp")
    with atomic_path(dst) as tmp:  # an interrupted pack never leaves a half-written file under its final name
        buf.tofile(tmp)
    return dst


def _copy(src: Path, dst: Path) -> Path:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


def pack_manifest(manifest: Manifest | pd.DataFrame | str | Path, out: str | Path, *,
                  columns: Sequence[str] | None = None,
                  on_item: Callable[[int, int], None] | None = None) -> Path:
    """Copy the image and the mask ``columns`` (default: every mask column) of each row under ``out``; mask
    columns not copied are emptied (the copy must not point back into the original folder). Returns the packed
    manifest's path."""
    m = manifest if isinstance(manifest, Manifest) else Manifest(manifest) if isinstance(manifest, pd.DataFrame) \
        else load_manifest(manifest)
    out = Path(out)
    df = m.df.copy()
    masks = [c for c in df.columns if c.startswith("mask_")]
    keep = masks if columns is None else list(columns)
    unknown = [c for c in keep if c not in masks]
    if unknown:
        raise InputError(m.source or "manifest", f"no mask column(s) {unknown}; it has {masks}")
    for col in masks:
        if col not in keep:
            df[col] = None
    for i, row in df.iterrows():
        stem = f"{i:06d}_{Path(str(row[schema.IMAGE])).stem}"
        df.at[i, schema.IMAGE] = str(pack_file(Path(row[schema.IMAGE]), out / "images" / stem))
        for col in keep:
            if _has(row[col]):
                df.at[i, col] = str(pack_file(Path(row[col]), out / col / stem))
        if on_item:
            on_item(i + 1, len(df))
    return save_manifest(Manifest(df), out / PACKED_MANIFEST)


def packed_size(out: str | Path) -> int:
    """Bytes under ``out`` (what a transfer of the packed copy moves)."""
    return sum(p.stat().st_size for p in Path(out).rglob("*") if p.is_file())
