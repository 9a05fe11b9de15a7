"""Validation reports every bad row with file, column and reason."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrlab.data.manifest import Manifest, load_manifest, save_manifest
from cxrlab.data.validate import errors, issues_frame, validate_manifest
from cxrlab.io import write_png


def test_every_bad_row_is_reported(tmp_path):
    for name, shape in (("a", (64, 64)), ("b", (64, 64)), ("c", (64, 64)), ("d", (64, 64))):
        write_png(tmp_path / f"{name}.png", np.zeros(shape, np.float32))
    write_png(tmp_path / "m_ok.png", np.ones((64, 64), bool))
    write_png(tmp_path / "m_small.png", np.ones((32, 64), bool))
    df = pd.DataFrame({
        "image": [str(tmp_path / f"{n}.png") for n in ("a", "b", "missing", "c", "c", "d")],
        "patient_id": ["p1", "p1", "p2", "p3", "p3", None],
        "source_dataset": "t",
        "view": ["PA", "PA", "sideways", "AP", "AP", "L"],
        "sex": ["M", "F", "M", "X", None, "F"],
        "age": [40, 40, -3, 200, "old", 30],
        "went_icu": [0, 1, 2, None, 0.5, 1],
        "brixia_global": [3, 19, None, None, None, 2],
        "mask_lungs": [str(tmp_path / "m_ok.png"), str(tmp_path / "m_small.png"), None, str(tmp_path / "nope.png"),
                       None, None],
    })
    issues = validate_manifest(Manifest(df))
    found = {(i.row, i.column) for i in issues}
    expected = {
        (0, "sex"), (1, "sex"),          # p1 is M and F
        (1, "mask_lungs"),               # 64x32 vs 64x64
        (1, "brixia_global"),            # 19 > 18
        (2, "image"), (2, "view"), (2, "age"), (2, "went_icu"),
        (3, "sex"), (3, "age"), (3, "image"), (3, "mask_lungs"),
        (4, "age"), (4, "went_icu"), (4, "image"),
        (5, "patient_id"),
    }
    assert found == expected
    by = {(i.row, i.column): i.reason for i in issues}
    assert "mask size 64x32 differs from image 64x64" in by[(1, "mask_lungs")]
    assert "duplicate image (listed 2 times)" in by[(3, "image")]
    assert "contradictory sex (F/M)" in by[(0, "sex")]
    assert "image file does not exist" in by[(2, "image")]
    assert "unknown view 'sideways'" in by[(2, "view")]
    assert "not a number: 'old'" in by[(4, "age")]
    assert "outside integer range 0-1" in by[(4, "went_icu")]
    assert str(tmp_path / "missing.png") in str(next(i for i in issues if i.row == 2))
    assert all(i.severity == "error" for i in issues)
    frame = issues_frame(issues)
    assert list(frame.columns) == ["row", "image", "column", "reason", "severity"] and len(frame) == len(issues)


def test_clean_manifest_roundtrip_has_no_errors(tmp_path):
    write_png(tmp_path / "img" / "a.png", np.zeros((64, 64), np.float32))
    write_png(tmp_path / "msk" / "a.png", np.zeros((64, 64), bool))
    df = pd.DataFrame({"image": [str(tmp_path / "img" / "a.png")], "patient_id": ["p"], "source_dataset": "t",
                       "view": ["PA"], "mask_lungs": [str(tmp_path / "msk" / "a.png")]})
    save_manifest(Manifest(df), tmp_path / "manifest.csv")
    assert errors(validate_manifest(load_manifest(tmp_path))) == []


def test_contradictory_age_is_a_warning(tmp_path):
    df = pd.DataFrame({"image": ["/x/a.png", "/x/b.png", "/x/c.png", "/x/d.png"], "patient_id": ["p", "p", "q", "q"],
                       "source_dataset": "t", "age": [40, 55, 60, 62], "offset_days": [0, 10, 0, 800]})
    issues = validate_manifest(Manifest(df), check_files=False)
    assert [(i.row, i.column, i.severity) for i in issues] == [(0, "age", "warning"), (1, "age", "warning")]
    assert "ages 40-55" in issues[0].reason and errors(issues) == []
