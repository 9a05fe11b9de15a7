"""Lung annotation conventions: one set of lung channels per convention, chosen at inference and in evaluation;
checkpoint selection by source-macro val Dice on a source-balanced val sample."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxrlab.anatomy import LungSegmenter, dice, evaluate_segmenter, load_config, train_segmentation
from cxrlab.anatomy.data import balanced_subset
from cxrlab.anatomy.train import selection_score
from cxrlab.data import load_manifest, schema
from cxrlab.errors import ConfigError, InputError
from cxrlab.io import read_image, read_mask, write_png

CONVENTIONS = {"narrow": ["narrow*"], "wide": ["wide*"]}


def two_convention_manifest(phantom_root: Path, out: Path) -> Path:
    """The phantom as two sources whose annotators disagree: 'wide' draws every lung 6 px larger (on real
    data, V7 and COVID-QU-Ex: each single-source model scores ~0.86 Dice on the other's masks).
    Patients alternate between the sources."""
    df = load_manifest(phantom_root / "manifest.csv").df.copy()
    patients = sorted(df[schema.PATIENT_ID].unique())
    wide = df[schema.PATIENT_ID].isin(patients[1::2]).to_numpy()
    df[schema.SOURCE_DATASET] = np.where(wide, "wide annotators", "narrow annotators")
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (13, 13))
    for i in np.flatnonzero(wide):
        for col in (schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG):
            path = out / "wide" / col / Path(df.at[i, col]).name
            write_png(path, cv2.dilate(read_mask(df.at[i, col]), kernel), mask=True)
            df.at[i, col] = str(path)
        df.at[i, schema.MASK_LUNGS] = None
    df = df.drop(columns=[schema.MASK_HEART])
    df.to_csv(out / "two.csv", index=False)
    return out / "two.csv"


@pytest.fixture(scope="module")
def convention_run(phantom_root: Path, tmp_path_factory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("conventions")
    manifest = two_convention_manifest(phantom_root, work)
    cfg = {"manifests": [str(manifest)], "size": 64, "encoder": "efficientnet_lite0", "weights": "imagenet",
           "arch_kwargs": {"decoder_channels": [32, 16, 8, 8, 8]}, "epochs": 5, "batch_size": 8,
           "samples_per_epoch": 160, "lr": 3e-3, "val_max_images": 8, "threads": 2,
           "augment": {"rotate": 5.0, "aspect": 0.0}, "seed": 0, "lung_conventions": CONVENTIONS}
    return train_segmentation(cfg, out=work / "run"), manifest


def test_each_convention_draws_its_own_annotators_lungs(convention_run):
    run, manifest = convention_run
    seg = LungSegmenter.from_run(run)
    assert seg.conventions == ["narrow", "wide"]
    assert seg.supervised_targets[2:] == ["mask_right_lung@narrow", "mask_left_lung@narrow",
                                          "mask_right_lung@wide", "mask_left_lung@wide"]
    df = pd.read_csv(manifest)
    split = pd.read_csv(run / "split.csv")
    held_out = df[df[schema.IMAGE].isin(split.loc[split["split"] != "train", schema.IMAGE])]
    scores: dict[tuple[str, str | None], float] = {}
    areas: dict[str | None, list[int]] = {"narrow": [], "wide": [], None: []}
    for source, rows in held_out.groupby(schema.SOURCE_DATASET):
        probs = seg.probabilities([read_image(p)[0] for p in rows[schema.IMAGE]])
        truths = [read_mask(r) | read_mask(l) for r, l in zip(rows[schema.MASK_RIGHT_LUNG], rows[schema.MASK_LEFT_LUNG])]
        for convention in ("narrow", "wide", None):
            preds = [seg.postprocess(p, convention)["lung_mask"] for p in probs]
            scores[source.split()[0], convention] = float(np.mean([dice(p, t) for p, t in zip(preds, truths)]))
            areas[convention] += [int(p.sum()) for p in preds]
    for own, other in (("narrow", "wide"), ("wide", "narrow")):
        assert scores[own, own] > scores[own, other] + 0.03, scores
        assert scores[own, own] >= scores[own, None] - 0.01, scores   # the shared channels sit in between
    assert np.mean(areas["wide"]) > 1.15 * np.mean(areas["narrow"])
    # the segmenter's own convention is what predict() uses; the default is the shared channels
    image = read_image(held_out[schema.IMAGE].iloc[0])[0]
    wide = LungSegmenter.from_run(run, convention="wide").predict(image)["lung_mask"]
    assert np.array_equal(wide, seg.postprocess(seg.probabilities([image])[0], "wide")["lung_mask"])
    shared = seg.predict(image)   # reads only the channels it needs; same masks as from every channel
    assert set(shared) == {"patient_right_mask", "patient_left_mask", "lung_mask"}
    assert np.array_equal(shared["lung_mask"], seg.postprocess(seg.probabilities([image])[0], None)["lung_mask"])
    assert seg.needed_channels() == [schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG]
    # a convention's lung channels replace the shared ones (the wide masks above came from these alone)
    assert LungSegmenter.from_run(run, convention="wide").needed_channels() == ["mask_right_lung@wide",
                                                                                "mask_left_lung@wide"]


def test_evaluation_scores_each_source_in_its_convention(convention_run):
    run, manifest = convention_run
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["selection"] == "source_macro"
    own, shared = metrics["test"]["by_source"], metrics["test_shared"]["by_source"]
    assert set(own) == {"narrow annotators", "wide annotators"}
    table = pd.read_parquet(run / "predictions.parquet")
    assert dict(zip(table[schema.SOURCE_DATASET], table["convention"])) == {
        "narrow annotators": "narrow", "wide annotators": "wide"}
    assert set(pd.read_parquet(run / "predictions_shared.parquet")["convention"]) == {"shared"}
    assert sum(s["lungs"]["dice_mean"] for s in own.values()) > sum(s["lungs"]["dice_mean"] for s in shared.values())
    seg = LungSegmenter.from_run(run)
    rows = pd.read_csv(manifest).head(3)
    table, _ = evaluate_segmenter(seg, rows, convention="wide")
    assert set(table["convention"]) == {"wide"}
    with pytest.raises(InputError, match="unknown lung convention 'v7'.*narrow, wide"):
        evaluate_segmenter(seg, rows, convention="v7")
    with pytest.raises(InputError, match="convention"):
        LungSegmenter.from_run(run, convention="v7")


def test_convention_config_errors(tmp_path: Path):
    base = {"manifests": ["m.csv"]}
    with pytest.raises(ConfigError, match="need a lung model"):
        load_config({**base, "targets": [schema.MASK_DISEASE], "lung_conventions": CONVENTIONS})
    with pytest.raises(ConfigError, match="identifier"):
        load_config({**base, "lung_conventions": {"covid-qu": ["COVID*"]}})
    with pytest.raises(ConfigError, match="at least one source pattern"):
        load_config({**base, "lung_conventions": {"qu": []}})
    cfg = load_config({**base, "lung_conventions": CONVENTIONS})
    assert cfg.channels == [schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG, schema.MASK_HEART,
                            "mask_right_lung@narrow", "mask_left_lung@narrow",
                            "mask_right_lung@wide", "mask_left_lung@wide"]
    assert cfg.convention_of("wide annotators") == "wide" and cfg.convention_of("JSRT") is None


def test_balanced_val_subset_sees_every_source():
    sources = np.array(["big"] * 100 + ["small"] * 5 + ["mid"] * 10, dtype=object)
    picks = balanced_subset(sources, 30, np.random.default_rng(0))
    assert len(picks) == 30 and len(set(picks)) == 30 and list(picks) == sorted(picks)
    names, counts = np.unique(sources[picks], return_counts=True)
    assert dict(zip(names, counts)) == {"big": 15, "mid": 10, "small": 5}   # small sources whole, rest to big
    assert len(balanced_subset(sources, 500, np.random.default_rng(0))) == 115


def test_source_macro_selection_counts_each_source_once():
    dice_ = np.array([0.99] * 8 + [0.80] * 2 + [np.nan])
    sources = np.array(["big"] * 8 + ["small"] * 2 + ["small"], dtype=object)
    assert selection_score(dice_, sources, "pooled") == pytest.approx(0.952)
    assert selection_score(dice_, sources, "source_macro") == pytest.approx(0.895)


def test_cli_convention_options(convention_run, tmp_path: Path):
    from typer.testing import CliRunner

    from cxrlab.cli.main import app

    run, manifest = convention_run
    image = pd.read_csv(manifest)[schema.IMAGE].iloc[1]
    res = CliRunner().invoke(app, ["segment", "predict", image, "--run", str(run), "--out", str(tmp_path / "p"),
                                   "--convention", "wide", "--no-overlays"])
    assert res.exit_code == 0, res.output
    written = read_mask(load_manifest(tmp_path / "p" / "manifest.csv").df[schema.MASK_LUNGS].iloc[0])
    expected = LungSegmenter.from_run(run, convention="wide").predict(read_image(image)[0])["lung_mask"]
    assert np.array_equal(written > 0, expected > 0)
    res = CliRunner().invoke(app, ["segment", "predict", image, "--run", str(run), "--out", str(tmp_path / "q"),
                                   "--convention", "v7"])
    assert res.exit_code != 0 and "unknown lung convention 'v7'" in str(res.exception or res.output)
    out = tmp_path / "shared.json"
    res = CliRunner().invoke(app, ["segment", "evaluate", "--run", str(run), "--convention", "shared",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    stored = json.loads((run / "metrics.json").read_text())["test_shared"]
    assert json.loads(out.read_text())["overall"]["lungs"]["dice_mean"] == pytest.approx(
        stored["overall"]["lungs"]["dice_mean"])


def test_run_default_output_is_used_unless_told_otherwise(convention_run, tmp_path: Path):
    import shutil
    import subprocess

    from cxrlab.anatomy.default_output import DEFAULT_OUTPUT_FILE, write_default_output

    src, manifest = convention_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    image = read_image(pd.read_csv(manifest)[schema.IMAGE].iloc[1])[0]
    assert LungSegmenter.from_run(run).convention is None  # no choice recorded: the shared channels
    with pytest.raises(InputError, match="unknown lung convention 'v7'"):
        write_default_output(run, "v7", {})
    assert not (run / DEFAULT_OUTPUT_FILE).exists()
    write_default_output(run, "wide", {"rule": "test"})
    seg = LungSegmenter.from_run(run)
    assert seg.convention == "wide"
    wide = LungSegmenter.from_run(run, convention="wide").predict(image)["lung_mask"]
    shared = LungSegmenter.from_run(run, convention="shared").predict(image)["lung_mask"]
    assert np.array_equal(seg.predict(image)["lung_mask"], wide)
    assert LungSegmenter.from_run(run, convention="shared").convention is None
    assert not np.array_equal(wide, shared)  # 'wide' draws lungs 6 px larger: the choice changes the masks
    # a damaged file is named in a one-line error by the installed command, never a traceback
    (run / DEFAULT_OUTPUT_FILE).write_text('{"convention": 3}')
    img_path = pd.read_csv(manifest)[schema.IMAGE].iloc[1]
    res = subprocess.run([str(Path(sys.executable).parent / "cxrlab"), "segment", "predict", img_path, "--run", str(run), "--out", str(tmp_path / "p")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert DEFAULT_OUTPUT_FILE in res.stderr + res.stdout and "Traceback" not in res.stderr + res.stdout


def test_default_output_rule_is_paired_on_held_out_sources():
    from cxrlab.anatomy.default_output import choose_default_output

    def fold(name, **dice):
        return {"held_out": name, "val": {k: {"dice_mean": v} for k, v in dice.items()}}

    # v7 beats shared on both folds that have it; scr loses on its folds: v7 is the default
    folds = [fold("qu", shared=0.90, scr=0.88, v7=0.93), fold("jsrt", shared=0.92, v7=0.94, qu=0.91),
             fold("v7", shared=0.89, scr=0.87, qu=0.90)]
    choice = choose_default_output(folds, ["scr", "v7", "qu"])
    assert choice["convention"] == "v7"
    assert choice["gains_over_shared_val"]["v7"]["mean_gain"] == pytest.approx(0.025)
    assert choice["gains_over_shared_val"]["v7"]["folds"] == ["qu", "jsrt"]
    # no convention gains over the shared channels: they stay the default
    folds = [fold("qu", shared=0.95, v7=0.93), fold("jsrt", shared=0.92, v7=0.91)]
    assert choose_default_output(folds, ["v7"])["convention"] is None
    # a gain below min_gain is not evidence enough to change the default
    folds = [fold("qu", shared=0.90, v7=0.903), fold("jsrt", shared=0.92, v7=0.921)]
    assert choose_default_output(folds, ["v7"])["convention"] is None
    assert choose_default_output(folds, ["v7"], min_gain=0.001)["convention"] == "v7"


def test_a_segmenter_on_another_engine_keeps_its_lung_output(convention_run):
    from cxrlab.severity.engine import stage_segmenter

    run, manifest = convention_run
    image = read_image(pd.read_csv(manifest)[schema.IMAGE].iloc[1])[0]
    seg = LungSegmenter.from_run(run, convention="wide")
    staged = stage_segmenter(seg, "onnxruntime")
    assert staged.convention == "wide" and staged.supervised_targets == seg.supervised_targets
    got, want = staged.predict(image)["lung_mask"], seg.predict(image)["lung_mask"]
    assert 2 * (got & want).sum() / (got.sum() + want.sum()) > 0.99


def test_cached_lung_masks_follow_the_output_and_runs_keep_theirs(convention_run, tmp_path: Path):
    """Masks of two lung outputs never share a cache entry, and a training run predicts with the output its
    masks came from, even after the lung run's default changed."""
    import shutil

    from cxrlab.anatomy.default_output import write_default_output
    from cxrlab.train.masks import fill_lung_masks, lung_run_id, trained_lung_output

    src, manifest = convention_run
    run = tmp_path / "lung"
    shutil.copytree(src, run)
    df = pd.read_csv(manifest).head(3)
    df[schema.IMAGE] = [str((Path(manifest).parent / p).resolve()) if not Path(p).is_absolute() else p
                        for p in df[schema.IMAGE]]
    df = df.drop(columns=[c for c in df.columns if c.startswith("mask_")])
    shared_df, shared_report = fill_lung_masks(df, run, tmp_path / "cache")
    assert shared_report["lung_output"] == "shared" and shared_report["predicted"] == 3
    write_default_output(run, "wide", {})
    wide_df, wide_report = fill_lung_masks(df, run, tmp_path / "cache")
    assert wide_report["lung_output"] == "wide" and wide_report["predicted"] == 3  # not taken from the cache
    assert wide_report["lung_run_id"] == lung_run_id(run) + "@wide"
    wide_area = sum(read_mask(p).sum() for p in wide_df[schema.MASK_LUNGS])
    assert wide_area > sum(read_mask(p).sum() for p in shared_df[schema.MASK_LUNGS])
    # a training run records the report; prediction takes the recorded output for that lung run only
    trained = tmp_path / "diag"
    trained.mkdir()
    (trained / "data_filter.json").write_text(json.dumps({"lung_masks": shared_report}))
    assert trained_lung_output(trained, run) == "shared"
    legacy = {k: v for k, v in shared_report.items() if k != "lung_output"}  # written before outputs were recorded
    (trained / "data_filter.json").write_text(json.dumps({"lung_masks": legacy}))
    assert trained_lung_output(trained, run) == "shared"
    (trained / "data_filter.json").write_text(json.dumps({"lung_masks": {**shared_report, "lung_run_id": "0" * 16}}))
    assert trained_lung_output(trained, run) == "run-default"  # another lung run: its own default
