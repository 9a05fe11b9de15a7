"""Train → predict → evaluate on the phantom, resume, run-directory contents, and clear input errors."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from cxrlab.anatomy import LungSegmenter, dice, evaluate_segmenter, load_config, train_segmentation
from cxrlab.anatomy.data import balanced_draw
from cxrlab.data import load_manifest, schema
from cxrlab.errors import ConfigError, InputError
from cxrlab.io import read_image, read_mask

EPOCHS = 3


def tiny_config(manifest: Path, **changes) -> dict:
    cfg = {"manifests": [str(manifest)], "size": 64, "arch": "unet", "encoder": "efficientnet_lite0",
           "weights": "imagenet", "arch_kwargs": {"decoder_channels": [32, 16, 8, 8, 8]}, "epochs": EPOCHS,
           "batch_size": 8, "samples_per_epoch": 160, "lr": 3e-3, "val_max_images": 8, "threads": 2,
           "augment": {"rotate": 5.0, "aspect": 0.0}, "seed": 0}
    cfg.update(changes)
    return cfg


@pytest.fixture(scope="module")
def run_dir(phantom_root: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("segrun") / "lung"
    return train_segmentation(tiny_config(phantom_root / "manifest.csv"), out=out)


def ellipse_baseline(shape: tuple[int, int]) -> np.ndarray:
    """A fixed two-ellipse 'lung' mask at the usual place of the lungs (the trivial baseline)."""
    h, w = shape
    m = np.zeros(shape, np.uint8)
    for cx in (0.3 * w, 0.7 * w):
        cv2.ellipse(m, (round(cx), round(0.5 * h)), (round(0.14 * w), round(0.3 * h)), 0, 0, 360, 1, -1)
    return m


def test_run_directory_is_complete(run_dir: Path):
    for name in ("recipe.yaml", "split.csv", "history.csv", "metrics.json", "predictions.parquet",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run_dir / name).exists(), name
    split = pd.read_csv(run_dir / "split.csv")
    assert list(split.columns) == ["image", "patient_id", "split"]
    assert split.groupby("patient_id")["split"].nunique().max() == 1      # patient-level
    assert load_config(run_dir / "recipe.yaml").seed == 0
    assert len(pd.read_csv(run_dir / "history.csv")) == EPOCHS


def test_round_trip_beats_fixed_ellipse_baseline(run_dir: Path, phantom_root: Path):
    seg = LungSegmenter.from_run(run_dir)
    split = pd.read_csv(run_dir / "split.csv")
    test_images = split.loc[split["split"] == "test", "image"].tolist()
    df = load_manifest(phantom_root / "manifest.csv").df
    rows = df[df["image"].isin(test_images)]
    assert len(rows) >= 3
    model_dice, base_dice = [], []
    images = [read_image(p)[0] for p in rows["image"]]
    preds = seg.predict_batch(images, batch_size=4)
    for (_, row), image, pred in zip(rows.iterrows(), images, preds):
        truth = read_mask(row[schema.MASK_LUNGS])
        assert pred["lung_mask"].shape == image.shape                     # at the input's size
        model_dice.append(dice(pred["lung_mask"], truth))
        base_dice.append(dice(ellipse_baseline(image.shape), truth))
    assert np.mean(model_dice) > np.mean(base_dice) + 0.05, (np.mean(model_dice), np.mean(base_dice))
    # the stored test metrics agree with a fresh evaluation
    metrics = json.loads((run_dir / "metrics.json").read_text())
    table, summary = evaluate_segmenter(seg, rows.reset_index(drop=True))
    assert summary["overall"]["lungs"]["dice_mean"] == pytest.approx(
        metrics["test"]["overall"]["lungs"]["dice_mean"], abs=1e-6)
    assert {"right_lung_dice", "left_lung_hd95_px256", "heart_jaccard"} <= set(table.columns)
    # the run records the software it was trained with (to tell whether a rerun can reproduce it)
    assert metrics["software"]["python"] == platform.python_version()
    assert metrics["software"]["torch"] == importlib.metadata.version("torch")


def test_predict_outputs_and_sides(run_dir: Path, phantom_manifest):
    seg = LungSegmenter.from_run(run_dir)
    image = read_image(phantom_manifest.df["image"].iloc[0])[0]
    masks = seg.predict(image)
    assert set(masks) == {"patient_right_mask", "patient_left_mask", "lung_mask", "heart_mask"}
    for m in masks.values():
        assert m.shape == image.shape and m.dtype == np.uint8
    if masks["patient_right_mask"].any() and masks["patient_left_mask"].any():
        xr = np.nonzero(masks["patient_right_mask"])[1].mean()
        xl = np.nonzero(masks["patient_left_mask"])[1].mean()
        assert xr < xl                                   # patient's right lung on the image's left
        # a mirrored film: sides are decided anatomically, so patient-right is still on the image's left
        flipped = seg.predict(np.ascontiguousarray(image[:, ::-1]))
        if flipped["patient_right_mask"].any() and flipped["patient_left_mask"].any():
            assert np.nonzero(flipped["patient_right_mask"])[1].mean() < np.nonzero(flipped["patient_left_mask"])[1].mean()
    # batched prediction on images of different sizes
    small = cv2.resize(image, (96, 80))
    out = seg.predict_batch([image, small])
    assert out[1]["lung_mask"].shape == (80, 96)
    # the service's lungs-only call: the same lungs, no heart computed
    lungs = seg.predict_batch([image, small], lungs_only=True)
    assert seg.needed_channels(lungs_only=True) == ["mask_right_lung", "mask_left_lung"]
    for full, only in zip(out, lungs):
        assert set(only) == {"patient_right_mask", "patient_left_mask", "lung_mask"}
        for key in only:
            np.testing.assert_array_equal(only[key], full[key])


def test_centroid_from_moments_is_the_pixel_mean():
    from cxrlab.anatomy.postprocess import centroid_x

    rng = np.random.default_rng(0)
    for dtype in (np.uint8, bool, np.int64):
        mask = (rng.random((60, 90)) > 0.8).astype(dtype)
        assert centroid_x(mask) == pytest.approx(np.nonzero(mask)[1].mean(), rel=1e-12)
    assert centroid_x(np.zeros((5, 5), np.uint8)) is None
    assert centroid_x(np.full((4, 6), 3, np.uint8)) == pytest.approx(2.5)  # any non-zero value counts once


def test_channel_mismatch_is_a_clear_error(run_dir: Path):
    seg = LungSegmenter.from_run(run_dir)
    image = np.zeros((64, 64), np.float32)
    with pytest.raises(InputError, match="1 channel"):
        seg.predict(np.stack([image, image]))
    with pytest.raises(InputError, match="image only"):
        seg.predict(image, lung_mask=np.zeros((64, 64), np.uint8))


def test_resume_continues_and_refuses_overwrite(run_dir: Path, phantom_root: Path, tmp_path: Path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    cfg = tiny_config(phantom_root / "manifest.csv")
    with pytest.raises(ConfigError, match="resume"):
        train_segmentation(cfg, out=copy)
    with pytest.raises(ConfigError, match="only 'epochs', 'device' and 'num_workers' may change"):
        train_segmentation({**cfg, "lr": 1e-2}, out=copy, resume=True)
    with pytest.raises(ConfigError):
        train_segmentation({**cfg, "epochs": EPOCHS + 1, "evaluate_test": False}, out=copy, resume=True)
    # the device and the loader's workers are not the recipe: a run started on a GPU resumes on a CPU
    train_segmentation({**cfg, "epochs": EPOCHS + 1, "device": "cpu", "num_workers": 1}, out=copy, resume=True)
    history = pd.read_csv(copy / "history.csv")
    assert history["epoch"].tolist() == list(range(1, EPOCHS + 2))


def test_two_channel_model_needs_lung_mask(phantom_root: Path, tmp_path: Path):
    cfg = tiny_config(phantom_root / "manifest.csv", input="image+lung", targets=[schema.MASK_DISEASE],
                      epochs=1, samples_per_epoch=8, evaluate_test=False, weights="none", encoder="resnet18",
                      arch_kwargs={"encoder_depth": 3, "decoder_channels": [16, 8, 8]})
    run = train_segmentation(cfg, out=tmp_path / "disease")
    seg = LungSegmenter.from_run(run)
    image = np.zeros((64, 64), np.float32)
    with pytest.raises(InputError, match="pass lung_mask"):
        seg.predict(image)
    out = seg.predict(image, lung_mask=np.ones((64, 64), np.uint8))
    assert set(out) == {"disease_mask"} and out["disease_mask"].shape == (64, 64)


def test_training_leaves_the_callers_thread_count_as_it_was(phantom_root: Path, tmp_path: Path):
    # a comparison times each decoder right after training it: a trainer that left torch on its recipe's
    # `threads` made every later timing in the process single-threaded
    cfg = tiny_config(phantom_root / "manifest.csv", threads=1, epochs=1, samples_per_epoch=8, evaluate_test=False,
                      weights="none", encoder="resnet18", arch_kwargs={"encoder_depth": 3, "decoder_channels": [16, 8, 8]})
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        train_segmentation(cfg, out=tmp_path / "threads")
        assert torch.get_num_threads() == 3
        with pytest.raises(ConfigError):  # also when training stops with an error
            train_segmentation({**cfg, "lr": 1.0}, out=tmp_path / "threads", resume=True)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_unsupervised_target_is_never_output(phantom_root: Path, tmp_path: Path):
    """Trained without any heart mask (as on V7/COVID-QU-Ex alone), the run must not emit a heart mask: that
    channel never saw a label, so its output would be noise fed to the cardiothoracic ratio."""
    manifest = load_manifest(phantom_root / "manifest.csv").df
    manifest[schema.MASK_HEART] = ""
    no_heart = tmp_path / "no_heart.csv"
    manifest.to_csv(no_heart, index=False)
    run = train_segmentation(tiny_config(no_heart, epochs=1, samples_per_epoch=16), out=tmp_path / "lungs_only")
    seg = LungSegmenter.from_run(run)
    assert seg.supervised_targets == [schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG]
    assert json.loads((run / "metrics.json").read_text())["supervised_targets"] == seg.supervised_targets
    masks = seg.predict(read_image(manifest["image"].iloc[0])[0])
    assert set(masks) == {"patient_right_mask", "patient_left_mask", "lung_mask"}
    assert "heart_mask" not in seg.output_keys()
    # evaluation scores the lungs only, even on rows that do have a heart mask
    table, summary = evaluate_segmenter(seg, load_manifest(phantom_root / "manifest.csv").df.head(4))
    assert not any(c.startswith("heart_") for c in table.columns)
    assert "heart" not in summary["overall"] and summary["overall"]["lungs"]["n"] == 4


def test_wrong_size_mask_and_bad_config(phantom_root: Path, tmp_path: Path):
    root = tmp_path / "bad"
    shutil.copytree(phantom_root, root)
    df = pd.read_csv(root / "manifest.csv")
    victim = root / df.loc[0, schema.MASK_RIGHT_LUNG]
    cv2.imwrite(str(victim), np.zeros((10, 12), np.uint8))
    with pytest.raises(InputError, match="differs from its image"):
        train_segmentation(tiny_config(root / "manifest.csv", epochs=1), out=tmp_path / "r")
    with pytest.raises(ConfigError, match="multiple of 32"):
        load_config(tiny_config(root / "manifest.csv", size=100))
    with pytest.raises(ConfigError, match="nope"):
        load_config({**tiny_config(root / "manifest.csv"), "nope": 1})
    with pytest.raises(ConfigError, match="both mask_right_lung and mask_left_lung"):
        load_config(tiny_config(root / "manifest.csv", targets=[schema.MASK_RIGHT_LUNG]))


# --- CLI: cxrlab segment predict / evaluate / train ------------------------------------------------------------
def _cli(args: list[str]):
    from typer.testing import CliRunner

    from cxrlab.cli.main import app

    return CliRunner().invoke(app, args)


def test_cli_predict_writes_masks_overlays_and_manifest(run_dir: Path, phantom_manifest, tmp_path: Path):
    images = [str(p) for p in phantom_manifest.df["image"].iloc[:3]]
    res = _cli(["segment", "predict", *images, "--run", str(run_dir), "--out", str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    out = load_manifest(tmp_path / "pred" / "manifest.csv").df
    assert len(out) == 3
    for col in (schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG, schema.MASK_LUNGS, schema.MASK_HEART):
        assert all(Path(p).exists() for p in out[col]), col
    assert "bio_plausible" in out.columns and "bio_right_lung_area_px" in out.columns
    overlays = sorted((tmp_path / "pred" / "overlays").glob("*.png"))
    assert len(overlays) == 3 and cv2.imread(str(overlays[0])).shape[2] == 3


def test_cli_evaluate_and_train_errors(run_dir: Path, tmp_path: Path):
    out = tmp_path / "eval.json"
    res = _cli(["segment", "evaluate", "--run", str(run_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads(out.read_text())
    stored = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert summary["overall"]["lungs"]["dice_mean"] == pytest.approx(stored["overall"]["lungs"]["dice_mean"])
    cfg = tmp_path / "seg.yaml"
    cfg.write_text("size: 64\nepochs: 1\n")
    res = _cli(["segment", "train", "--config", str(cfg), "--set", "size=100", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "multiple of 32" in str(res.exception or res.output)


def test_init_from_starts_at_the_other_runs_weights(run_dir: Path, phantom_root: Path, tmp_path: Path):
    cfg = tiny_config(phantom_root / "manifest.csv", epochs=1, samples_per_epoch=8, lr=1e-12, weight_decay=0.0,
                      evaluate_test=False, init_from=str(run_dir))
    tuned = train_segmentation(cfg, out=tmp_path / "tuned")
    before = LungSegmenter.from_run(run_dir).model.state_dict()
    after = LungSegmenter.from_run(tuned).model.state_dict()
    # lr ~ 0: one epoch later the weights are still the source run's (BatchNorm running stats move; skip them)
    for name, tensor in before.items():
        if "running_" not in name and "num_batches" not in name:
            assert torch.allclose(tensor.float(), after[name].float(), atol=1e-5), name
    assert load_config(tuned / "recipe.yaml").init_from == str(run_dir)
    fresh = train_segmentation({**cfg, "init_from": None}, out=tmp_path / "fresh")
    assert not torch.allclose(LungSegmenter.from_run(fresh).model.state_dict()["net.segmentation_head.0.weight"],
                              before["net.segmentation_head.0.weight"])
    other = tiny_config(phantom_root / "manifest.csv", epochs=1, samples_per_epoch=8, evaluate_test=False,
                        init_from=str(run_dir), targets=[schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG])
    with pytest.raises(ConfigError, match="init_from .* do not fit"):
        train_segmentation(other, out=tmp_path / "bad")


def test_source_weighted_draw():
    sources = np.array(["a"] * 50 + ["b"] * 10 + ["c"] * 40, dtype=object)
    rng = np.random.default_rng(0)
    equal = balanced_draw(sources, 90, rng)
    assert sorted(np.unique(sources[equal], return_counts=True)[1]) == [30, 30, 30]
    picks = balanced_draw(sources, 100, rng, {"a": 2.0, "b": 1.0, "c*": 1.0})
    names, counts = np.unique(sources[picks], return_counts=True)
    assert dict(zip(names, counts)) == {"a": 50, "b": 25, "c": 25}
    assert len(set(picks[sources[picks] == "a"])) == 50          # no replacement where a source has enough
    with pytest.raises(ConfigError, match="no pattern matches source 'c'"):
        balanced_draw(sources, 10, rng, {"a": 1.0, "b": 1.0})
    with pytest.raises(ConfigError, match="source_weights"):
        load_config({"manifests": ["m.csv"], "source_weights": {"a": 0}})


def test_early_stopping_and_best_checkpoint_are_separate():
    from cxrlab.anatomy.train import early_stopping_step

    # a gain below min_delta keeps counting patience but still replaces the best checkpoint
    assert early_stopping_step(0.9605, best=0.96, best_saved=0.96, min_delta=1e-3) == (False, True)
    assert early_stopping_step(0.962, best=0.96, best_saved=0.9605, min_delta=1e-3) == (True, True)
    assert early_stopping_step(0.959, best=0.96, best_saved=0.9605, min_delta=1e-3) == (False, False)


def test_loader_workers_give_the_same_run(run_dir: Path, phantom_root: Path, tmp_path: Path):
    """Augmentation is seeded per (seed, epoch, item): worker processes (a GPU's feeders) change nothing."""
    small = {"epochs": 1, "samples_per_epoch": 48, "val_max_images": 4, "evaluate_test": False}
    workers = train_segmentation(tiny_config(phantom_root / "manifest.csv", num_workers=2, **small),
                                 out=tmp_path / "w2")
    alone = train_segmentation(tiny_config(phantom_root / "manifest.csv", **small), out=tmp_path / "w0")
    a, b = (pd.read_csv(r / "history.csv").iloc[0] for r in (workers, alone))
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    assert a["val_dice"] == pytest.approx(b["val_dice"], rel=1e-6)
    assert a["device"] == "cpu"
    assert "device cpu" in (workers / "recipe.yaml").read_text().splitlines()[0]


def test_cuda_without_a_gpu_is_a_config_error(phantom_root: Path, tmp_path: Path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU; the error is for machines without one")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        train_segmentation(tiny_config(phantom_root / "manifest.csv", device="cuda"), out=tmp_path / "gpu")
    assert not (tmp_path / "gpu" / "recipe.yaml").exists()
