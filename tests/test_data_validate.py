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


def test_same_pixels_under_two_paths_are_caught_with_content_check(tmp_path):
    """A film saved twice (other file bytes, same pixels) under two patients is a split-leakage error; within one
    patient a warning; different films are not flagged; without --content nothing is decoded."""
    import subprocess
    import sys
    from pathlib import Path

    import cv2

    rng = np.random.default_rng(0)
    film, other, third = (rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(3))
    cv2.imwrite(str(tmp_path / "a.png"), film, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    cv2.imwrite(str(tmp_path / "b.png"), film, [cv2.IMWRITE_PNG_COMPRESSION, 9])   # same pixels, other bytes
    cv2.imwrite(str(tmp_path / "c.png"), other)
    (tmp_path / "d.png").write_bytes((tmp_path / "c.png").read_bytes())          # an exact copy
    cv2.imwrite(str(tmp_path / "e.png"), third)
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
    df = pd.DataFrame({"image": [str(tmp_path / f"{n}.png") for n in "abcde"],
                       "patient_id": ["p1", "p2", "p3", "p3", "p4"], "source_dataset": "t", "view": "PA"})
    assert not validate_manifest(Manifest(df))  # off by default
    issues = validate_manifest(Manifest(df), check_content=True)
    by_row = {i.row: i for i in issues}
    assert set(by_row) == {0, 1, 2, 3}
    assert by_row[0].severity == "error" and "same pixels as " + str(tmp_path / "b.png") in by_row[0].reason
    assert "patients p1, p2" in by_row[1].reason and "both sides of a split" in by_row[1].reason
    assert by_row[2].severity == by_row[3].severity == "warning" and "(same patient)" in by_row[3].reason

    save_manifest(Manifest(df), tmp_path / "manifest.csv")
    cli = str(Path(sys.executable).parent / "cxrlab")
    proc = subprocess.run([cli, "data", "validate", str(tmp_path / "manifest.csv"), "--content", "--report",
                           str(tmp_path / "issues.csv")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert "2 error(s), 2 warning(s)" in " ".join(proc.stdout.split())
    assert pd.read_csv(tmp_path / "issues.csv")["reason"].str.contains("same pixels").sum() == 4
    proc = subprocess.run([cli, "data", "validate", str(tmp_path / "manifest.csv")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
