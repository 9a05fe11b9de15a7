"""cxrlab.data.pack: a compact copy of a manifest must be lossless and self-contained."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxrlab.data import schema
from cxrlab.data.manifest import load_manifest
from cxrlab.data.pack import pack_manifest
from cxrlab.errors import InputError
from cxrlab.io import read_image, read_mask


def test_packed_copy_decodes_to_the_same_pixels(phantom_root: Path, tmp_path: Path):
    src = load_manifest(phantom_root / "manifest.csv").df.head(6).reset_index(drop=True)
    deep = tmp_path / "deep.png"  # a 16-bit film WebP cannot hold: copied byte for byte
    cv2.imwrite(str(deep), (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 13))
    src.loc[5, schema.IMAGE] = str(deep)
    out = pack_manifest(src, tmp_path / "packed", columns=[schema.MASK_LUNGS])
    packed = load_manifest(out).df
    assert out == tmp_path / "packed" / "manifest.csv"
    assert packed[schema.IMAGE].iloc[:5].str.endswith(".webp").all() and packed[schema.IMAGE].iloc[5].endswith(".png")
    for a, b in zip(src[schema.IMAGE], packed[schema.IMAGE]):
        assert np.array_equal(read_image(a)[0], read_image(b)[0])
    for a, b in zip(src[schema.MASK_LUNGS], packed[schema.MASK_LUNGS]):
        assert np.array_equal(read_mask(a), read_mask(b))
    assert packed[schema.MASK_DISEASE].isna().all()  # not asked for: emptied, never pointing back at the source
    assert Path(deep).read_bytes() == Path(packed[schema.IMAGE].iloc[5]).read_bytes()
    # every other column unchanged, and the folder moves as a whole (paths are relative to it)
    keep = [c for c in src.columns if c != schema.IMAGE and not c.startswith("mask_")]
    pd.testing.assert_frame_equal(src[keep], packed[keep], check_dtype=False)
    shutil.move(tmp_path / "packed", tmp_path / "moved")
    assert Path(load_manifest(tmp_path / "moved" / "manifest.csv").df[schema.IMAGE].iloc[0]).is_file()
    webp = sum(p.stat().st_size for p in (tmp_path / "moved" / "images").glob("*.webp"))
    assert webp < sum(Path(p).stat().st_size for p in src[schema.IMAGE].iloc[:5])


def test_unknown_mask_column_is_named(phantom_root: Path, tmp_path: Path):
    src = load_manifest(phantom_root / "manifest.csv").df.head(2)
    with pytest.raises(InputError, match="mask_ribs"):
        pack_manifest(src, tmp_path / "p", columns=["mask_ribs"])
