"""Label fusion: secondary labels mapped through a table, fused rows train-only, unmapped rows reported."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrlab.data.fusion import PRESETS, fuse_manifests, parse_label_map, train_only_rows
from cxrlab.data.manifest import Manifest
from cxrlab.errors import ConfigError, InputError


def primary() -> Manifest:
    return Manifest(pd.DataFrame({"image": ["/a/1.png", "/a/2.png"], "patient_id": ["s1", "s2"],
                                  "source_dataset": "COVID-19-NY-SBU", "went_icu": [1.0, 0.0]}))


def ricord() -> Manifest:
    return Manifest(pd.DataFrame({"image": [f"/r/{i}.dcm" for i in range(5)], "patient_id": [f"r{i}" for i in range(5)],
                                  "source_dataset": "MIDRC-RICORD-1c",
                                  "ricord_grade": ["negative", "Mild", "moderate", "severe", None]}))


def test_ricord_grades_map_to_icu_and_are_train_only():
    result = fuse_manifests(primary(), [(ricord(), PRESETS["ricord_icu"])])
    df = result.manifest.df
    fused = df[df["source_dataset"] == "MIDRC-RICORD-1c"]
    assert fused["went_icu"].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert fused["train_only"].tolist() == [1] * 4 and df.loc[:1, "train_only"].tolist() == [0, 0]
    assert df.loc[:1, "went_icu"].tolist() == [1.0, 0.0]  # primary labels untouched
    assert train_only_rows(df).tolist() == [False, False, True, True, True, True]
    assert len(result.report) == 1 and "has no mapping" in result.report["reason"].iloc[0]


def test_fused_rows_may_enter_evaluation_when_asked():
    df = fuse_manifests(primary(), [(ricord(), PRESETS["ricord_icu"])], train_only=False,
                        drop_unmapped=False).manifest.df
    assert (df["train_only"] == 0).all() and len(df) == 7 and np.isnan(df["went_icu"].iloc[-1])


def test_parse_label_map_and_errors():
    m = parse_label_map("grade:went_icu:low=0,high=1")
    assert m.source_column == "grade" and m.table == {"low": 0, "high": 1}
    assert parse_label_map("ricord_icu") is PRESETS["ricord_icu"]
    with pytest.raises(ConfigError, match="label map"):
        parse_label_map("nonsense")
    with pytest.raises(InputError, match="ricord_grade"):
        fuse_manifests(primary(), [(primary(), PRESETS["ricord_icu"])])


def test_patient_id_shared_by_two_sources_is_refused():
    other = Manifest(pd.DataFrame({"image": ["/x.png"], "patient_id": ["s1"], "source_dataset": "other"}))
    with pytest.raises(InputError, match="appears in two sources"):
        fuse_manifests(primary(), [(other, None)])


def test_split_sends_fused_rows_to_training_only():
    from cxrlab.data.fusion import kfold_fused, split_fused

    prim = Manifest(pd.DataFrame({"image": [f"/a/{i}.png" for i in range(40)],
                                  "patient_id": [f"s{i // 2}" for i in range(40)], "source_dataset": "sbu",
                                  "went_icu": [i % 2 for i in range(40)]}))
    df = fuse_manifests(prim, [(ricord(), PRESETS["ricord_icu"])]).manifest.df
    parts = split_fused(df, seed=1)
    assert (parts[df["train_only"] == 1] == "train").all()
    assert set(parts[df["train_only"] == 0]) == {"train", "val", "test"}
    assert parts.equals(split_fused(df, seed=1))
    folds = kfold_fused(df, k=4, seed=0)
    assert (folds[df["train_only"] == 1] == -1).all() and set(folds[df["train_only"] == 0]) == {0, 1, 2, 3}
