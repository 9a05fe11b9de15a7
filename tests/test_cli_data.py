"""The `cxrlab data` commands end to end on a small phantom: phantom -> import -> validate -> split -> stats
-> exclude -> fuse."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrlab.cli.main import app
from cxrlab.data.manifest import load_manifest
from cxrlab.data.splits import load_split
from cxrlab.errors import InputError

runner = CliRunner()


def run(*args: str, code: int = 0):
    result = runner.invoke(app, ["data", *map(str, args)])
    assert result.exit_code == code, (result.output, result.exception)
    return result


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    run("phantom", root / "ph", "--n-patients", 12, "--size", 64, "--seed", 3)
    out = run("import", "cxrlab", root / "ph", "--out", root / "imp")
    assert "0 error(s)" in out.output and "imported" in out.output
    return root


def test_import_validate_stats(imported):
    m = load_manifest(imported / "imp")
    assert len(m) == len(pd.read_csv(imported / "ph" / "manifest.csv")) and m.df["image"].map(
        lambda p: p.startswith(str(imported / "ph"))).all()
    assert "0 error(s)" in run("validate", imported / "imp").output
    text = run("stats", imported / "imp").output
    for title in ("classes per source", "images per patient", "views", "ages"):
        assert title in text


def test_split_is_patient_disjoint_and_stable(imported):
    run("split", imported / "imp", "--out", imported / "s1.csv", "--seed", 5)
    run("split", imported / "imp", "--out", imported / "s2.csv", "--seed", 5)
    a, b = load_split(imported / "s1.csv"), load_split(imported / "s2.csv")
    assert a.equals(b) and set(a["split"]) == {"train", "val", "test"}
    assert "classes per split" in run("stats", imported / "imp", "--split", imported / "s1.csv").output
    run("split", imported / "imp", "--out", imported / "folds.csv", "--kfold", 3)
    folds = pd.read_csv(imported / "folds.csv")
    assert folds.groupby("patient_id")["fold"].nunique().max() == 1 and set(folds["fold"]) == {0, 1, 2}


def test_validate_fails_on_bad_manifest(imported, tmp_path):
    df = pd.read_csv(imported / "imp" / "manifest.csv")
    df.loc[0, "view"] = "diagonal"
    df["image"] = [str((imported / "imp" / p).resolve()) for p in df["image"]]
    df = df.drop(columns=[c for c in df.columns if c.startswith("mask_")])
    df.to_csv(tmp_path / "manifest.csv", index=False)
    result = run("validate", tmp_path, "--report", tmp_path / "issues.csv", code=1)
    assert "1 error(s)" in result.output
    assert pd.read_csv(tmp_path / "issues.csv")["column"].tolist() == ["view"]


def test_exclude_writes_report(imported):
    df = pd.read_csv(imported / "imp" / "manifest.csv")
    df.loc[0, "age"] = 10
    df.loc[1, "view"] = "L"
    df.to_csv(imported / "imp" / "edited.csv", index=False)
    result = run("exclude", imported / "imp" / "edited.csv", "--out", imported / "ex")
    report = pd.read_csv(imported / "ex" / "exclusions.csv")
    assert set(report.loc[report["action"] == "excluded", "criterion"]) == {"min_age", "frontal_only"}
    assert len(load_manifest(imported / "ex")) == len(df) - 2 and "kept" in result.output


def test_fuse_and_unknown_format(imported, tmp_path):
    df = pd.read_csv(imported / "imp" / "manifest.csv").head(4)
    df["image"] = [str((imported / "imp" / p).resolve()) for p in df["image"]]
    df = df.drop(columns=[c for c in df.columns if c.startswith("mask_")])
    sec = df.assign(patient_id="r_" + df["patient_id"], source_dataset="ricord",
                    ricord_grade=["mild", "severe", "moderate", "negative"])
    sec.to_csv(tmp_path / "sec.csv", index=False)
    run("fuse", imported / "imp", "--add", tmp_path / "sec.csv", "--map", "ricord_icu", "--out", tmp_path / "fused")
    fused = load_manifest(tmp_path / "fused").df
    assert fused.loc[fused["source_dataset"] == "ricord", "went_icu"].tolist() == [0, 1, 0, 0]
    assert fused.loc[fused["source_dataset"] == "ricord", "train_only"].eq(1).all()
    result = runner.invoke(app, ["data", "import", "cxrlab", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert isinstance(result.exception, InputError) and "does not exist" in str(result.exception)


def test_import_with_options(tmp_path):
    import json

    import numpy as np

    from cxrlab.io import write_png

    for klass in ("Normal", "COVID"):
        for i in range(2):
            write_png(tmp_path / "src" / klass / f"p{i}_{klass}.png", np.full((64, 64), 0.5, np.float32))
    run("import", "folder", tmp_path / "src", "--out", tmp_path / "out", "--opt", "label=diagnosis",
        "--opt", r"patient-regex=^(p\d+)_")
    df = load_manifest(tmp_path / "out").df
    assert sorted(df["diagnosis"]) == ["covid", "covid", "normal", "normal"] and df["patient_id"].nunique() == 2
    record = json.loads((tmp_path / "out" / "import.json").read_text())
    assert record["format"] == "folder" and record["images"] == 4 and record["options"]["label"] == "diagnosis"


def test_split_join_same_films_keeps_a_shared_film_in_one_part(imported, tmp_path):
    import shutil

    df = pd.read_csv(imported / "imp" / "manifest.csv")
    df["image"] = [str((imported / "imp" / p).resolve()) for p in df["image"]]
    df = df.drop(columns=[c for c in df.columns if c.startswith("mask_")])
    patients = sorted(df["patient_id"].unique())
    # the first patient's first film, listed again under the last patient (a copy in another collection)
    src = df[df["patient_id"] == patients[0]].iloc[0]
    copy = tmp_path / "copy.png"
    shutil.copyfile(src["image"], copy)
    extra = src.copy()
    extra["image"], extra["patient_id"] = str(copy), patients[-1]
    df = pd.concat([df, extra.to_frame().T], ignore_index=True)
    df.to_csv(tmp_path / "manifest.csv", index=False)
    pair = [patients[0], patients[-1]]
    for seed in range(4):
        out = run("split", tmp_path, "--out", tmp_path / f"s{seed}.csv", "--seed", seed, "--join-same-films").output
        assert "1 group(s) of patients share a film" in out
        split = load_split(tmp_path / f"s{seed}.csv")
        assert split.loc[split["patient_id"].isin(pair), "split"].nunique() == 1
        assert set(split["patient_id"]) == set(patients)  # the file keeps the real patient ids
    run("split", tmp_path, "--out", tmp_path / "f.csv", "--kfold", 3, "--join-same-films")
    folds = pd.read_csv(tmp_path / "f.csv", dtype={"patient_id": str})
    assert folds.loc[folds["patient_id"].isin(pair), "fold"].nunique() == 1
