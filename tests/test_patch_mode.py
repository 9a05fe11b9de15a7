"""Patch input mode (``input.patches``, issue #18) in the learning engine, on the phantom at tiny sizes: a run
trains on random lung-centred patches, ``predict`` aggregates K patches per image into ordinary per-image
probabilities (vote or mean), inference is reproducible, training patch centres lie in the lungs, and the
schema refuses inconsistent sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrlab.data import schema
from cxrlab.errors import ConfigError, InputError
from cxrlab.recipes.loader import validate_recipe
from cxrlab.train import load_run, patch_mode, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ["normal", "bacterial", "viral", "covid19"]
PATCHES = ["input.patches.canvas=64", "input.patches.size=32", "input.patches.count=4",
           "input.patches.train_count=2"]
FAST = ["train.num_workers=0", "train.stages.0.epochs=1", "train.batch_size=8"]


@pytest.fixture(scope="module")
def centres_seen() -> list[tuple[np.ndarray, np.ndarray]]:
    return []


@pytest.fixture(scope="module")
def patch_run(phantom_root, cxrlab_home, tmp_path_factory, centres_seen) -> Path:
    """One epoch of phantom-diagnosis in patch mode, with a spy on the centre sampler (mask, centres)."""
    real = patch_mode.sample_lung_centres

    def spy(mask, k, rng, source="lung mask"):
        centres = real(mask, k, rng, source)
        centres_seen.append((np.array(mask, copy=True), centres))
        return centres

    out = tmp_path_factory.mktemp("runs") / "patch"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(patch_mode, "sample_lung_centres", spy)
        return train("phantom-diagnosis", [phantom_root / "manifest.csv"], out, show_progress=False,
                     overrides=FAST + PATCHES + ["input.size=32"])


def _probs(df: pd.DataFrame) -> np.ndarray:
    return df[[f"prob_{c}" for c in CLASSES]].to_numpy(dtype=float)


def test_patch_run_is_an_ordinary_run_directory(patch_run):
    for name in ("recipe.yaml", "split.csv", "model.json", "metrics.json", "predictions.parquet",
                 "checkpoints/best.pt"):
        assert (patch_run / name).is_file(), name
    contract = json.loads((patch_run / "model.json").read_text())
    assert contract["size"] == 32 and contract["channels"] == 1
    assert contract["patches"]["canvas"] == 64 and contract["patches"]["aggregate"] == "vote"
    pred = pd.read_parquet(patch_run / "predictions.parquet")
    np.testing.assert_allclose(_probs(pred).sum(1), 1, atol=1e-6)
    # vote shares over K = 4 patches: multiples of 1/4
    np.testing.assert_allclose(_probs(pred) * 4, np.round(_probs(pred) * 4), atol=1e-6)


def test_training_patch_centres_lie_inside_the_lungs(patch_run, centres_seen):
    assert centres_seen
    for mask, centres in centres_seen:
        assert mask.shape == (64, 64)
        assert mask[centres[:, 0], centres[:, 1]].all()
    # training draws train_count (2) per image per step; validation/prediction draw count (4)
    assert {len(c) for _, c in centres_seen} == {2, 4}


def test_training_draws_fresh_patches_each_step(patch_run):
    run = load_run(patch_run)
    spec = run.pipeline.patches
    canvas = torch.zeros(1, 2, 64, 64)
    canvas[0, 0] = torch.rand(64, 64)
    canvas[0, 1, 8:56, 8:56] = 1
    a = patch_mode.train_patches(canvas, spec, [0, 0, 0])
    b = patch_mode.train_patches(canvas, spec, [0, 1, 0])
    assert a.shape == (2, 1, 32, 32) and not torch.equal(a, b)
    assert torch.equal(a, patch_mode.train_patches(canvas, spec, [0, 0, 0]))  # seeded: resume repeats it


@pytest.mark.parametrize("aggregate", ["vote", "mean"])
def test_predict_aggregates_patches_per_image(patch_run, phantom_manifest, aggregate):
    run = load_run(patch_run)
    run.pipeline.spec.patches.aggregate = aggregate
    df = phantom_manifest.df.head(5).copy()
    pred = run.predict(df)
    probs = _probs(pred)
    assert len(pred) == 5 and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)
    # the same as aggregating the K patches by hand
    sample_patches = []
    from cxrlab.data.dataset import load_sample
    masks = [c for c in df.columns if c.startswith("mask_") and df[c].notna().all()]
    for i in range(len(df)):
        sample_patches.append(run.patches_for(load_sample(df.iloc[i], masks, label_columns=[])))
    with torch.no_grad():
        logits = torch.cat([run.model(p)["diagnosis"] for p in sample_patches]).numpy()
    expected = patch_mode.image_probabilities(logits, run.pipeline.patches)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    if aggregate == "vote":
        np.testing.assert_allclose(probs * 4, np.round(probs * 4), atol=1e-6)


def test_inference_is_deterministic_and_matches_training_predictions(patch_run, phantom_manifest):
    run = load_run(patch_run)
    df = phantom_manifest.df.head(6).copy()
    first, second = run.predict(df), load_run(patch_run).predict(df.iloc[::-1])
    np.testing.assert_array_equal(_probs(first), _probs(second.iloc[::-1]))  # seeded per image, not per batch
    saved = pd.read_parquet(patch_run / "predictions.parquet").set_index("image").loc[df["image"]]
    # training's final predictions used the same patches (half-precision cached canvases: small differences)
    np.testing.assert_allclose(_probs(first), _probs(saved), atol=0.26)
    assert (np.abs(_probs(first) - _probs(saved)) < 1e-3).mean() > 0.8


def test_single_input_paths_refuse_patch_runs(patch_run, phantom_manifest):
    run = load_run(patch_run)
    sample = {"image": np.zeros((64, 64), np.float32), "lung_mask": np.ones((64, 64), np.uint8)}
    with pytest.raises(ConfigError, match="patch-mode"):
        run.inputs_for(sample)
    assert run.patches_for(sample).shape == (4, 1, 32, 32)
    with pytest.raises(ConfigError, match="patch-mode"):
        run.pipeline.prepare_with_lungs(sample)  # the service's single-input path refuses patch runs


@pytest.fixture(scope="module")
def cam_run(phantom_root, cxrlab_home, tmp_path_factory) -> Path:
    """Patches of 64 px (the Pasa CNN's last block is then 2×2; at 32 px it is 1×1 and every CAM is flat)."""
    out = tmp_path_factory.mktemp("runs") / "patch_cam"
    return train("phantom-diagnosis", [phantom_root / "manifest.csv"], out, show_progress=False,
                 overrides=FAST + ["input.size=64", "input.patches.canvas=128", "input.patches.size=64",
                                   "input.patches.count=4", "input.patches.aggregate=mean"])


def test_explanation_uses_the_probabilistic_patch_cam(cam_run, phantom_manifest, tmp_path):
    from cxrlab.explain.hcs import heatmap_concordance
    from cxrlab.explain.run import explain_images, explain_rows, load_explain_model, prepare_patches
    from cxrlab.patches import probabilistic_patch_cam

    df = phantom_manifest.df.head(3)
    patch_run = cam_run
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        em = load_explain_model(patch_run)
        assert torch.get_num_threads() == 3  # loading a model leaves the caller's thread count alone
    finally:
        torch.set_num_threads(before)
    rows = df.to_dict("records")
    results = explain_rows(em, rows, "diagnosis")
    predicted = load_run(patch_run).predict(df)
    np.testing.assert_allclose([r["probs"] for r in results], _probs(predicted), atol=1e-5)  # predict's patches
    for row, res in zip(rows, results):
        assert res["patches"] == 4 and res["aggregate"] == "mean" and res["overlay"].shape == (128, 128, 3)
        patches, corners, _, mask = prepare_patches(em, row)
        heat, _ = probabilistic_patch_cam(em.model.as_classifier("diagnosis"), patches, corners, mask.shape,
                                          res["pred"], em.target_layers)
        assert heat.shape == (128, 128) and np.isclose(res["lung_fraction"], mask.mean())
        window = np.zeros(mask.shape, bool)
        for r, c in corners:
            window[r:r + 64, c:c + 64] = True
        assert not heat[~window].any()  # nothing outside the patches
        expected = heatmap_concordance(heat, mask) if heat.any() else float("nan")
        np.testing.assert_equal(res["hcs"], expected)
    assert any(0 <= r["hcs"] <= 1 for r in results)
    out = explain_images(patch_run, df["image"].tolist()[:2], tmp_path / "ex", data=phantom_manifest.source)
    summary = json.loads((out / "explain.json").read_text())
    assert len(summary["images"]) == 2 and all((out / r["overlay"]).is_file() for r in summary["images"])


def _recipe(input_spec: dict) -> object:
    return validate_recipe({"name": "t", "tasks": [{"kind": "diagnosis"}], "input": input_spec}, "test")


@pytest.mark.parametrize("spec, message", [
    ({"patches": {"canvas": 64, "size": 128}}, "larger than the canvas"),
    ({"size": 48, "patches": {"canvas": 64, "size": 32}}, "input.size=48 but input.patches.size=32"),
    ({"roi": "lungs", "patches": {"canvas": 64, "size": 32}}, "roi: none"),
    ({"augment": ["hflip"], "patches": {"canvas": 64, "size": 32}}, "augment"),
    ({"patches": {"aggregate": "max"}}, "vote"),
    ({"patches": {"count": 0}}, "count"),
    ({"patches": {"canvas": 64, "size": 32, "k": 3}}, "k"),
])
def test_schema_refuses_bad_patch_settings(spec, message):
    with pytest.raises(ConfigError, match=message):
        _recipe(spec)


def test_schema_patch_defaults_and_size_follow_the_patch():
    r = _recipe({"patches": {}})
    p = r.input.patches
    assert (p.canvas, p.size, p.count, p.train_count, p.aggregate) == (1024, 224, 100, 1, "vote")
    assert _recipe({"patches": {"canvas": 64, "size": 32}}).input.size == 32
    assert _recipe({}).input.patches is None


def test_patch_mode_refuses_tasks_it_cannot_aggregate():
    from cxrlab.train.inputs import InputPipeline
    from cxrlab.train.trainer import build_tasks

    recipe = validate_recipe({"name": "t", "tasks": [{"kind": "binary", "column": "went_icu"}],
                              "input": {"patches": {"canvas": 64, "size": 32}}}, "test")
    with pytest.raises(ConfigError, match="cannot be aggregated"):
        build_tasks(recipe, InputPipeline(recipe.input))


class _EllipseSegmenter:
    """A stand-in lung run: two fixed ellipses per film (the lung-model wiring is under test, not segmentation)."""

    calls = 0

    def predict_batch(self, images, lung_masks=None):
        import cv2

        out = []
        for image in images:
            h, w = image.shape[-2:]
            right, left = np.zeros((h, w), np.uint8), np.zeros((h, w), np.uint8)
            cv2.ellipse(right, (w // 3, h // 2), (w // 8, h // 4), 0, 0, 360, 1, -1)
            cv2.ellipse(left, (2 * w // 3, h // 2), (w // 8, h // 4), 0, 0, 360, 1, -1)
            out.append({"patient_right_mask": right, "patient_left_mask": left, "lung_mask": right | left})
            _EllipseSegmenter.calls += 1
        return out


def test_lung_masks_come_from_the_lung_run_and_are_cached(phantom_root, phantom_manifest, cxrlab_home, tmp_path,
                                                          monkeypatch):
    from cxrlab.anatomy.predict import LungSegmenter
    from cxrlab.data.manifest import save_manifest

    lung = tmp_path / "lung"
    (lung / "checkpoints").mkdir(parents=True)
    (lung / "checkpoints" / "best.pt").write_bytes(b"stand-in lung run")  # its hash keys the mask cache
    monkeypatch.setattr(LungSegmenter, "from_run", classmethod(lambda cls, run, *a, **k: _EllipseSegmenter()))
    df = phantom_manifest.df.copy()
    blank = np.arange(len(df)) % 2 == 0
    for col in ("mask_lungs", "mask_right_lung", "mask_left_lung"):
        df[col] = df[col].astype(object)
        df.loc[blank, col] = None
    save_manifest(df, tmp_path / "blank.csv")
    with pytest.raises(InputError, match="no mask"):  # without the lung run: the missing mask, named
        train("phantom-diagnosis", [tmp_path / "blank.csv"], tmp_path / "no_lungs", show_progress=False,
              overrides=FAST + PATCHES + ["input.size=32"])
    run = train("phantom-diagnosis", [tmp_path / "blank.csv"], tmp_path / "run", show_progress=False,
                overrides=FAST + PATCHES + ["input.size=32"], lung_model=lung)
    masks = json.loads((run / "data_filter.json").read_text())["lung_masks"]
    assert masks["predicted"] == int(blank.sum()) and masks["given"] == int((~blank).sum())
    model = load_run(run)
    films = df.loc[blank, "image"].head(3).tolist()  # plain image paths: no masks but the lung run's
    before = _EllipseSegmenter.calls
    out = model.predict(films, lung_model=lung, mask_cache=run / "lung_masks")
    assert model.lung_masks_report["from_cache"] == 3 and _EllipseSegmenter.calls == before
    np.testing.assert_allclose(_probs(out).sum(1), 1, atol=1e-6)


def test_cli_predict_and_evaluate_on_a_patch_run(patch_run, phantom_root, tmp_path):
    from typer.testing import CliRunner

    from cxrlab.cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(patch_run), str(phantom_root / "manifest.csv"),
                                 "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "p.csv")
    assert len(table) == len(pd.read_csv(phantom_root / "manifest.csv"))
    np.testing.assert_allclose(_probs(table).sum(1), 1, atol=1e-6)
    # evaluate: metrics, and HCS from the probabilistic patch Grad-CAM against the canvas lung masks
    result = runner.invoke(app, ["evaluate", str(patch_run), "--data", str(phantom_root / "manifest.csv"),
                                 "--n-boot", "20", "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ev" / "metrics.json").is_file() and (tmp_path / "ev" / "report.html").is_file()


def test_the_service_serves_a_patch_run_as_predict_does(patch_run, service_runs, lung_stage_rows, phantom_root,
                                                        tmp_path):
    """K patches on the lung stage's masks, aggregated as in ``predict``; the heatmap is the probabilistic patch
    Grad-CAM mapped onto the image; with no lung model configured the service refuses to start."""
    from cxrlab.serve import load_service_config, write_service_config
    from cxrlab.serve.pipeline import AnalysisPipeline

    config = write_service_config(tmp_path / "svc" / "service.yaml", lung_run=service_runs["lung"],
                                  diagnosis_run=patch_run)
    pipeline = AnalysisPipeline.from_config(load_service_config(config))
    table = lung_stage_rows([phantom_root / p for p in pd.read_csv(phantom_root / "manifest.csv")[schema.IMAGE][:2]],
                            tmp_path)
    expected = load_run(patch_run).predict(table)
    for path, (_, row) in zip(table[schema.IMAGE], expected.iterrows()):
        analysis = pipeline.analyze(Path(path).read_bytes(), heatmap=True)
        got = analysis.report["diagnosis"]["probabilities"]
        np.testing.assert_allclose([got[c] for c in CLASSES], [row[f"prob_{c}"] for c in CLASSES], atol=1e-6)
        assert analysis.report["heatmap"]["shown_on_image"] and "heatmap" in analysis.images
    lonely = write_service_config(tmp_path / "svc2" / "service.yaml", diagnosis_run=patch_run)
    with pytest.raises(ConfigError, match="needs lung masks: configure a lung model"):
        AnalysisPipeline.from_config(load_service_config(lonely))
