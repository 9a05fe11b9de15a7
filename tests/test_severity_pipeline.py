"""Two-stage severity on the phantom: short training of both stages, fitted scoring, predictions, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrlab.anatomy.train import train_segmentation
from cxrlab.cli.main import app
from cxrlab.data import schema
from cxrlab.errors import ConfigError, InputError
from cxrlab.io import read_image
from cxrlab.severity import SeverityPipeline, evaluate_severity, train_severity
from cxrlab.severity.config import ScoringParams

# A tiny U-Net (3 encoder stages, narrow decoder) at 64 px keeps both trainings short; the schedules are the
# shortest that learned the phantom (lungs: val Dice ~0.95; disease: test Dice ~0.76) in trial runs.
SEG = {"arch": "unet", "encoder": "resnet18", "weights": "none", "size": 64, "samples_per_epoch": 64,
       "arch_kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
       "augment": {"enabled": False}, "val_max_images": 12, "evaluate_test": False, "seed": 0}
LUNG = {**SEG, "batch_size": 8, "lr": 1e-2, "epochs": 6}
DISEASE = {**SEG, "batch_size": 4, "lr": 3e-3, "epochs": 8, "input": "image+lung"}


@pytest.fixture(scope="module")
def runs(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("severity")
    manifest = str(phantom_root / "manifest.csv")
    lung = train_segmentation({**LUNG, "manifests": [manifest]}, out=out / "lung")
    run = train_severity({"lung_run": str(lung), "manifests": [manifest], "out": str(out / "sev"),
                          "disease": DISEASE})
    return {"lung": lung, "run": run, "out": out}


@pytest.fixture(scope="module")
def test_rows(runs, phantom_manifest) -> pd.DataFrame:
    split = pd.read_csv(runs["run"] / "disease" / "split.csv", dtype=str)
    part = dict(zip(split[schema.IMAGE], split["split"]))
    df = phantom_manifest.df.copy()
    return df[df[schema.IMAGE].map(part) == "test"].reset_index(drop=True)


def test_run_directory_is_self_describing(runs):
    run = runs["run"]
    for name in ("recipe.yaml", "severity.json", "scoring.json", "disease/recipe.yaml", "disease/split.csv",
                 "disease/checkpoints/best.pt"):
        assert (run / name).exists(), name
    scoring = ScoringParams.load(run / "scoring.json")
    assert scoring.zone_strategy == "equal_area"
    assert scoring.fitted_on["zone_threshold"]["split"] == "val"
    assert scoring.fitted_on["brixia_cutpoints"]["split"] == "train"  # the phantom's training images carry Brixia
    c = scoring.brixia_cutpoints
    assert c[0] <= c[1] <= c[2]


def test_the_run_keeps_the_lung_output_it_was_fitted_with(runs, tmp_path):
    import json
    import shutil

    from cxrlab.errors import InputError

    run = tmp_path / "sev"
    shutil.copytree(runs["run"], run)
    spec = json.loads((run / "severity.json").read_text())
    assert spec["lung_output"] == "shared"  # this lung model has only the shared lung channels
    spec["lung_output"] = "v7"  # a later default must not change the run: the recorded output is what loads
    (run / "severity.json").write_text(json.dumps(spec))
    with pytest.raises(InputError, match="unknown lung convention 'v7'"):
        SeverityPipeline.from_run(run)
    del spec["lung_output"]  # runs fitted before outputs were recorded used the shared channels
    (run / "severity.json").write_text(json.dumps(spec))
    assert SeverityPipeline.from_run(run).lung.convention is None


def test_disease_threshold_is_fitted_on_val_recorded_and_used(runs, test_rows, tmp_path):
    import shutil

    from cxrlab.anatomy.predict import LungSegmenter
    from cxrlab.anatomy.threshold import write_run_threshold

    record = json.loads((runs["run"] / "disease" / "threshold.json").read_text())
    t = record["threshold"]
    assert record["fitted_on"]["split"] == "val" and record["fitted_on"]["images"] > 0
    assert set(record["fitted_on"]["groups"]) <= {"disease", "clear"}
    assert record["score"] >= record["score_at_recipe_threshold"]
    best = max(record["scores"].values())
    assert t == record["recipe_threshold"] or record["scores"][f"{t:.2f}"] == pytest.approx(best)
    pipe = SeverityPipeline.from_run(runs["run"])
    assert pipe.disease.config.threshold == t and pipe._stages[1].config.threshold == t  # every engine cuts there
    assert ScoringParams.load(runs["run"] / "scoring.json").fitted_on["disease_threshold"]["threshold"] == t

    run = tmp_path / "sev"
    shutil.copytree(runs["run"], run)
    images = [read_image(p)[0] for p in test_rows[schema.IMAGE].iloc[:6]]
    area = {}
    for cut in (0.1, 0.9):
        write_run_threshold(run / "disease", cut, {})
        area[cut] = [int(r.masks["disease_mask"].sum()) for r in SeverityPipeline.from_run(run).predict_batch(images)]
    assert all(lo >= hi for lo, hi in zip(area[0.1], area[0.9])) and sum(area[0.1]) > sum(area[0.9])
    (run / "disease" / "threshold.json").write_text('{"threshold": 1.5}')
    with pytest.raises(InputError, match="strictly between 0 and 1"):
        LungSegmenter.from_run(run / "disease")


def test_two_stage_beats_trivial_baseline(runs, test_rows, phantom_manifest):
    """Per-lung involvement and Brixia total on held-out patients beat "predict the training mean"."""
    pipe = SeverityPipeline.from_run(runs["run"])
    result = evaluate_severity(pipe, test_rows, test_rows, readers={"truth": "brixia_"}, n_boot=20)
    assert result["failed_images"] == 0
    split = pd.read_csv(runs["run"] / "disease" / "split.csv", dtype=str)
    train = phantom_manifest.df[phantom_manifest.df[schema.IMAGE].isin(split[split["split"] == "train"][schema.IMAGE])]
    mean_inv = np.concatenate([train["involvement_right"], train["involvement_left"]]).mean()
    truth_inv = np.concatenate([test_rows["involvement_right"], test_rows["involvement_left"]])
    baseline_inv = np.abs(truth_inv - mean_inv).mean()
    model_inv = result["involvement"]["fraction_mae"]["value"]
    assert model_inv < baseline_inv, (model_inv, baseline_inv)
    assert result["disease"]["dice_mean"] > 0.3
    total = result["brixia"]["total"]["rows"][0]
    assert total["other"] == "model"
    baseline_total = np.abs(test_rows[schema.BRIXIA_GLOBAL] - train[schema.BRIXIA_GLOBAL].mean()).mean()
    assert total["mae"]["value"] < baseline_total, (total["mae"]["value"], baseline_total)


def test_a_normal_film_without_a_mask_counts_zero_zones_in_the_reference(runs, test_rows):
    """A normal film with no disease mask (as in COVID-QU-Ex) is scored against a zone count of 0 and enters the
    zone-count MAE, as the scoring paper's test set does; the COVID-19-only MAE leaves it out."""
    from cxrlab.severity.evaluation import predict_rows, segmentation_cis

    normal = test_rows[test_rows[schema.FINDING] == "normal"].head(1).copy()
    sick = test_rows[test_rows[schema.FINDING] != "normal"].dropna(subset=[schema.MASK_DISEASE]).head(2)
    assert len(normal) == 1 and len(sick) == 2
    normal[schema.MASK_DISEASE] = None
    pred = predict_rows(SeverityPipeline.from_run(runs["run"]), pd.concat([sick, normal], ignore_index=True))
    clear = pred[pred[schema.IMAGE] == normal[schema.IMAGE].iloc[0]].iloc[0]
    assert clear["ref_zone_count"] == 0 and not np.isnan(clear["fp_area"])
    cis = segmentation_cis(pred, n_boot=10)
    err = (pred["pred_zone_count"] - pred["ref_zone_count"]).abs()
    assert cis["zone_count_mae"]["n"] == 3 and cis["zone_count_mae"]["value"] == pytest.approx(err.mean())
    assert cis["zone_count_mae_disease"]["n"] == 2
    assert cis["zone_count_mae_disease"]["value"] == pytest.approx(err[pred["n_true"] > 0].mean())


def test_predict_one_image_masks_scores_overlay(runs, test_rows, tmp_path):
    pipe = SeverityPipeline.from_run(runs["run"])
    image, _ = read_image(test_rows[schema.IMAGE].iloc[0])
    res = pipe.predict(image, "phantom image")
    for key in ("patient_right_mask", "patient_left_mask", "disease_mask"):
        assert res.masks[key].shape == image.shape and res.masks[key].dtype == np.uint8
    lungs = res.masks["patient_right_mask"] | res.masks["patient_left_mask"]
    assert not (res.masks["disease_mask"] & ~lungs).any()  # nothing outside the predicted lungs
    record = res.to_json()
    json.dumps(record)  # serialisable (NaN became null)
    assert 0 <= record["scores"]["brixia_global"] <= 18 and 0 <= record["scores"]["zone_count"] <= 6
    files = res.save(tmp_path, "case", image)
    overlay = cv2.imread(files["overlay"], cv2.IMREAD_UNCHANGED)
    assert overlay.shape == (*image.shape, 3)
    assert (overlay[..., 2] > overlay[..., 1]).any()  # red disease / text drawn on the grey image
    assert json.loads(Path(files["record"]).read_text())["scores"] == record["scores"]


def test_batch_mode_one_table_and_bad_file_does_not_stop_it(runs, test_rows, tmp_path):
    pipe = SeverityPipeline.from_run(runs["run"])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    rows = pd.concat([test_rows.head(3), pd.DataFrame({schema.IMAGE: [str(bad)], schema.PATIENT_ID: ["x"]})])
    table = pipe.predict_manifest(rows, out_dir=tmp_path / "pred", batch_size=2)
    assert len(table) == 4
    assert table["error"].notna().sum() == 1 and "broken.png" in table["error"].dropna().iloc[0]
    assert table["pred_brixia_global"].notna().sum() == 3
    assert (tmp_path / "pred" / "predictions.csv").exists()


def test_overlays_outline_the_reference_disease_when_the_manifest_has_one(runs, test_rows, tmp_path):
    pipe = SeverityPipeline.from_run(runs["run"])
    with_mask = test_rows[test_rows[schema.MASK_DISEASE].map(lambda p: isinstance(p, str) and p != "")]
    row = with_mask[with_mask[schema.MASK_DISEASE].map(lambda p: read_image(p)[0].any())].head(1)
    assert len(row) == 1
    no_truth = row.assign(**{schema.MASK_DISEASE: None})
    stem = Path(row[schema.IMAGE].iloc[0]).stem

    def magenta(out_dir: Path) -> int:
        pipe.predict_manifest(row if out_dir.name == "truth" else no_truth, out_dir=out_dir, overlays=True)
        rgb = cv2.cvtColor(cv2.imread(str(out_dir / "overlays" / f"{stem}.png")), cv2.COLOR_BGR2RGB).astype(int)
        return int(((rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] > 200)).sum())

    assert magenta(tmp_path / "truth") > 0
    assert magenta(tmp_path / "plain") == 0


def test_cli_predict_writes_record_and_overlay(runs, test_rows, tmp_path):
    image = test_rows[schema.IMAGE].iloc[0]
    res = CliRunner().invoke(app, ["severity", "predict", image, "--run", str(runs["run"]), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    stem = Path(image).stem
    assert (tmp_path / "overlays" / f"{stem}.png").exists()
    assert json.loads((tmp_path / "records" / f"{stem}.json").read_text())["scores"]["brixia_global"] is not None


def test_wrong_runs_are_rejected(runs):
    with pytest.raises(ConfigError, match="does not predict mask_disease"):
        SeverityPipeline.from_runs(runs["lung"], runs["lung"])
    with pytest.raises(ConfigError, match="not a lung model"):
        SeverityPipeline.from_runs(runs["run"] / "disease", runs["run"] / "disease")
    with pytest.raises(InputError, match="not a severity run"):
        SeverityPipeline.from_run(runs["lung"])


def test_mask_image_size_mismatch_is_a_clear_error(runs):
    pipe = SeverityPipeline.from_run(runs["run"])
    lung = np.zeros((64, 64), np.uint8)
    lung[10:50, 10:30] = 1
    masks = {"patient_right_mask": lung, "patient_left_mask": lung[:, ::-1].copy(),
             "disease_mask": np.zeros((64, 64), np.uint8)}
    with pytest.raises(InputError, match="image size"):
        pipe.score(masks, "x.png", image_shape=(64, 80))
    empty = {k: np.zeros((64, 64), np.uint8) for k in masks}
    with pytest.raises(InputError, match="lung mask is empty"):
        pipe.score(empty, "x.png", image_shape=(64, 64))


def test_inference_backends_agree_with_the_runs_own_segmenters(runs, test_rows):
    """Every engine (channels-last torch, onnxruntime) gives the masks the runs' own NCHW segmenters give, and
    the segmenters handed to the pipeline are left as they were."""
    images = [read_image(p)[0] for p in test_rows[schema.IMAGE][:4]]
    ref = SeverityPipeline.from_run(runs["run"], backend="torch-fp32")
    assert ref.backend == "torch-fp32"
    lungs = ref.lung.predict_batch(images)
    disease = ref.disease.predict_batch(images, [m[schema.KEY_LUNG_MASK] for m in lungs])
    expected = [{schema.KEY_RIGHT_MASK: lm[schema.KEY_RIGHT_MASK], schema.KEY_LEFT_MASK: lm[schema.KEY_LEFT_MASK],
                 schema.KEY_DISEASE_MASK: dm[schema.KEY_DISEASE_MASK]} for lm, dm in zip(lungs, disease)]
    assert all(p.is_contiguous() for p in ref.lung.model.parameters())  # not converted to channels-last
    for backend in ("torch-fp32", "auto", "onnxruntime"):
        got = SeverityPipeline.from_run(runs["run"], backend=backend).segment_batch(images)
        for want, have in zip(expected, got):
            for key, mask in want.items():
                assert mask.shape == have[key].shape
                assert np.mean(mask != have[key]) < 0.01, (backend, key)
    assert ref.with_scoring(ScoringParams(zone_threshold=0.3))._stages is ref._stages  # engines not rebuilt
    with pytest.raises(ConfigError, match="unknown inference backend 'tpu'"):
        SeverityPipeline.from_run(runs["run"], backend="tpu")
