"""Exclusion criteria: each one removes exactly its rows, with the reason, and can be switched off."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrlab.data.exclusions import ExclusionConfig, apply_exclusions, document_like, inverted_like
from cxrlab.data.manifest import Manifest
from cxrlab.data.phantom import render_sample
from cxrlab.io import write_png


@pytest.fixture
def table(tmp_path) -> Manifest:
    chest = render_sample("covid19", size=96, seed=3)["image"]
    page = np.ones((96, 96), np.float32)
    page[10:12, 5:90] = 0.0  # lines of "text"
    page[20:22, 5:70] = 0.0
    images = {"ok": chest, "acc2": chest, "child": chest, "ct": chest, "lat": chest, "page": page,
              "inv": 1.0 - chest, "late_first": chest}
    for name, arr in images.items():
        write_png(tmp_path / f"{name}.png", arr)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    rows = [  # name, accession, offset, age, modality, view
        ("ok", "A1", 1, 50, "DX", "PA"), ("acc2", "A1", 2, 50, "DX", "PA"), ("late_first", "A2", 0, 40, "CR", "AP"),
        ("child", "A3", 0, 12, "CR", "AP"), ("ct", "A4", 0, 60, "CT", "PA"), ("lat", "A5", 0, 60, "DX", "L"),
        ("broken", "A6", 0, 60, "DX", "PA"), ("page", "A7", 0, 60, "DX", "PA"), ("inv", "A8", 0, 60, "DX", "PA"),
    ]
    df = pd.DataFrame([{"image": str(tmp_path / f"{n}.png"), "patient_id": f"p_{n}", "accession": a,
                        "offset_days": o, "age": g, "modality": mo, "view": v, "source_dataset": "t"}
                       for n, a, o, g, mo, v in rows])
    return Manifest(df)


def test_every_criterion_with_reason(table):
    result = apply_exclusions(table)
    report = result.report.set_index(result.report["image"].str.rsplit("/", n=1).str[-1])
    expected = {"acc2.png": "first_per_accession", "child.png": "min_age", "ct.png": "radiographs_only",
                "lat.png": "frontal_only", "broken.png": "drop_unreadable", "page.png": "drop_documents"}
    excluded = report[report["action"] == "excluded"]
    assert excluded["criterion"].to_dict() == expected
    assert "accession A1" in excluded.loc["acc2.png", "reason"] and "12 < 18" in excluded.loc["child.png", "reason"]
    assert report.loc["inv.png", "action"] == "flagged"
    kept = result.kept.df
    assert sorted(kept["image"].str.rsplit("/", n=1).str[-1]) == ["inv.png", "late_first.png", "ok.png"]
    assert kept.set_index("accession")["inverted_suspect"].to_dict() == {"A1": 0, "A2": 0, "A8": 1}


def test_criteria_can_be_switched_off(table):
    config = ExclusionConfig(first_per_accession=False, min_age=None, radiographs_only=False, frontal_only=False,
                             drop_unreadable=False, drop_documents=False, flag_inverted=False)
    result = apply_exclusions(table, config)
    assert len(result.kept) == len(table) and result.report.empty
    without = apply_exclusions(Manifest(table.df.drop(columns=["accession", "modality"])),
                               ExclusionConfig(drop_unreadable=False, drop_documents=False, flag_inverted=False))
    assert without.skipped == ["first_per_accession: no 'accession' column", "radiographs_only: no 'modality' column"]
    dropped = apply_exclusions(table, ExclusionConfig(drop_inverted=True)).report
    assert "inv.png" in " ".join(dropped.loc[dropped["action"] == "excluded", "image"])


def test_first_image_follows_offset_not_row_order(table):
    df = table.df.copy()
    df.loc[df["accession"] == "A1", "offset_days"] = [5, 1]  # acc2 is now earlier
    result = apply_exclusions(Manifest(df), ExclusionConfig(drop_unreadable=False, drop_documents=False,
                                                            flag_inverted=False))
    first = result.report[result.report["criterion"] == "first_per_accession"]
    assert first["image"].str.endswith("ok.png").tolist() == [True]


def test_pixel_heuristics_on_phantoms():
    for seed, finding in enumerate(["normal", "bacterial", "viral", "covid19"]):
        chest = render_sample(finding, size=128, seed=seed)["image"]
        assert not inverted_like(chest) and inverted_like(1.0 - chest) and not document_like(chest)
