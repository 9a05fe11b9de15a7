"""Training end to end on the phantom: learning well above chance, the run-directory contract, exact resume,
the feature cache, balancing, label fusion, prediction with ``load_run`` and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrlab.data.manifest import load_manifest, save_manifest
from cxrlab.data.splits import assert_patient_disjoint
from cxrlab.errors import ConfigError
from cxrlab.train import get_balancer, load_run, train

FAST = ["train.num_workers=0", "train.precision=auto"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def home(cxrlab_home) -> Path:
    return cxrlab_home


@pytest.fixture(scope="module")
def diag_run(phantom_root, home, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "diag"
    return train("phantom-diagnosis", [phantom_root / "manifest.csv"], out, show_progress=False,
                 overrides=FAST + ["input.size=48", "train.stages.0.epochs=14"])


def _held_out(run: Path) -> pd.DataFrame:
    pred = pd.read_parquet(run / "predictions.parquet")
    return pred[pred["split"].isin(["val", "test"])]


def test_diagnosis_is_learned_well_above_chance(diag_run):
    held = _held_out(diag_run)
    classes = ["normal", "bacterial", "viral", "covid19"]
    probs = held[[f"prob_{c}" for c in classes]].to_numpy()
    truth = held["finding"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    accuracy = (probs.argmax(1) == truth).mean()
    assert accuracy > 0.5, accuracy  # chance is 0.25 (balanced phantom)


def test_run_directory_contract(diag_run, phantom_manifest):
    for name in ("recipe.yaml", "split.csv", "model.json", "history.csv", "metrics.json", "predictions.parquet",
                 "checkpoints/last.pt", "checkpoints/best.pt", "weights_report.json"):
        assert (diag_run / name).is_file(), name
    assert "seed: 0" in (diag_run / "recipe.yaml").read_text()
    split = pd.read_csv(diag_run / "split.csv", dtype={"patient_id": str})
    assert list(split.columns) == ["image", "patient_id", "split"] and len(split) == len(phantom_manifest)
    assert_patient_disjoint(split)
    pred = pd.read_parquet(diag_run / "predictions.parquet")
    assert pred.set_index("image")["split"].to_dict() == split.set_index("image")["split"].to_dict()
    probs = pred[[c for c in pred.columns if c.startswith("prob_")]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-4)
    metrics = json.loads((diag_run / "metrics.json").read_text())
    for part in ("train", "val", "test"):
        assert metrics[part]["n"] == int((split["split"] == part).sum())  # val/test never resampled
    history = pd.read_csv(diag_run / "history.csv")
    assert {"stage", "epoch", "train_loss", "val_loss", "lr", "train_images_per_s"} <= set(history.columns)
    assert metrics["run"]["best_val_loss"] == pytest.approx(history["val_loss"].min())
    software = metrics["run"]["software"]  # what the numbers depend on, for a rerun years later
    assert software["cxrlab"] == __import__("cxrlab").__version__ and torch.__version__.startswith(software["torch"])
    contract = json.loads((diag_run / "model.json").read_text())
    assert contract["backbone"] == "pasa_cnn" and contract["channels"] == 1 and contract["size"] == 48


def test_load_run_predicts_new_images_as_in_training(diag_run):
    run = load_run(diag_run)
    pred = _held_out(diag_run).head(6)
    fresh = run.predict(list(pred["image"]))
    cols = [c for c in pred.columns if c.startswith("prob_")]
    # training inputs are cached in half precision; fresh ones are not: equal up to that rounding
    np.testing.assert_allclose(fresh[cols].to_numpy(), pred[cols].to_numpy(), atol=0.03)
    assert run.cam_target_layers() and run.head_names == ["diagnosis"]
    assert set(run.predict_sample({"image": np.zeros((80, 60), np.float32)})) >= set(cols)


def test_opacity_per_lung_is_learned(phantom_root, home, tmp_path):
    run = train("aloe-opacity", [phantom_root / "manifest.csv"], tmp_path / "opacity", show_progress=False,
                overrides=FAST + ["model.backbone=pasa_cnn", "model.weights=none", "input.size=48",
                                  "train.balancing=class_weight", "split.ratios=[0.6, 0.2, 0.2]",
                                  "train.stages=[{epochs: 10, train_blocks: all, lr: 0.003}]"])
    held = _held_out(run)
    y = np.concatenate([held["opacity_right"], held["opacity_left"]]).astype(int)
    p = np.concatenate([held["pred_opacity_right"], held["pred_opacity_left"]]).astype(int)
    from cxrlab.tasks import macro_mae

    majority = np.bincount(y).argmax()
    assert macro_mae(y, p) < macro_mae(y, np.full_like(y, majority)) - 0.3
    assert (p == y).mean() > 0.55


RESUME = FAST + ["input.size=32", "model.dropout=0.2", "train.balancing=sampler", "train.batch_size=8",
                 "train.stages=[{epochs: 2, train_blocks: 0, lr: 0.01}, {epochs: 3, train_blocks: 2, lr: 0.003}]"]


def test_resume_after_interruption_reproduces_the_uninterrupted_run(phantom_root, home, tmp_path):
    data = [phantom_root / "manifest.csv"]
    full = train("phantom-diagnosis", data, tmp_path / "full", show_progress=False, overrides=RESUME)

    def kill(row: dict) -> None:
        if row["stage"] == 2 and row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train("phantom-diagnosis", data, tmp_path / "cut", show_progress=False, overrides=RESUME, on_epoch_end=kill)
    assert not (tmp_path / "cut" / "metrics.json").exists()
    with pytest.raises(ConfigError, match="--resume"):
        train("phantom-diagnosis", data, tmp_path / "cut", show_progress=False, overrides=RESUME)
    resumed = train("phantom-diagnosis", data, tmp_path / "cut", resume=True, show_progress=False)

    a, b = pd.read_parquet(full / "predictions.parquet"), pd.read_parquet(resumed / "predictions.parquet")
    cols = [c for c in a.columns if c.startswith("prob_")]
    np.testing.assert_allclose(a[cols].to_numpy(), b[cols].to_numpy(), atol=1e-6)
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (full, resumed))
    assert ma["val"] == mb["val"] and ma["test"] == mb["test"]
    ha, hb = pd.read_csv(full / "history.csv"), pd.read_csv(resumed / "history.csv")
    assert len(ha) == 5 and list(ha["stage"]) == [1, 1, 2, 2, 2]
    np.testing.assert_allclose(ha[["train_loss", "val_loss"]], hb[["train_loss", "val_loss"]], atol=1e-7)


def test_feature_cache_gives_the_uncached_result(phantom_root, home, tmp_path):
    common = FAST + ["input.size=32", "train.precision=fp32", "train.channels_last=off",
                     "train.stages=[{epochs: 2, train_blocks: 1, lr: 0.01}]", f"train.cache_dir={tmp_path / 'c'}"]
    cached = train("phantom-diagnosis", [phantom_root / "manifest.csv"], tmp_path / "a", show_progress=False,
                   overrides=common)
    plain = train("phantom-diagnosis", [phantom_root / "manifest.csv"], tmp_path / "b", show_progress=False,
                  overrides=common + ["train.feature_cache=off"])
    assert list((tmp_path / "c").glob("features-*.pt"))  # boundary activations of the 4 frozen blocks
    ha, hb = pd.read_csv(cached / "history.csv"), pd.read_csv(plain / "history.csv")
    np.testing.assert_allclose(ha[["train_loss", "val_loss"]], hb[["train_loss", "val_loss"]], rtol=2e-2)


def test_extra_manifest_trains_only(phantom_root, home, other_films, tmp_path):
    extra = other_films(load_manifest(phantom_root / "manifest.csv").df.head(12), tmp_path / "films")
    extra["patient_id"] = "EXTRA-" + extra["patient_id"]
    extra = extra.rename(columns={"finding": "diagnosis_label"})
    save_manifest(extra, tmp_path / "extra.csv")
    run = train("phantom-diagnosis", [phantom_root / "manifest.csv", tmp_path / "extra.csv"], tmp_path / "fused",
                show_progress=False, overrides=FAST + ["input.size=32", "train.stages.0.epochs=1",
                                                       "data.rename={diagnosis_label: finding}"])
    split = pd.read_csv(run / "split.csv", dtype={"patient_id": str})
    fused = split[split["patient_id"].str.startswith("EXTRA-")]
    assert len(fused) == 12 and set(fused["split"]) == {"train"}


def test_balancing_strategies_resample_training_items_only():
    strata = np.array([0] * 30 + [1] * 10 + [2] * 5)
    g = torch.Generator().manual_seed(0)
    under = get_balancer("under").epoch_indices(strata, 0, g)
    assert np.bincount(strata[under]).tolist() == [5, 5, 5]
    over = get_balancer("over").epoch_indices(strata, 0, g)
    assert np.bincount(strata[over]).tolist() == [30, 30, 30] and set(range(45)) <= set(over)
    assert get_balancer("over").needs_augmentation
    sampled = get_balancer("sampler").epoch_indices(strata, 0, g)
    assert len(sampled) == 45 and np.bincount(strata[sampled], minlength=3).min() >= 7  # ~15 each
    w = get_balancer("class_weight").sample_weight(strata)
    assert w[0] * 30 == pytest.approx(w[-1] * 5)  # every class carries the same total weight
    focal = get_balancer("focal")
    assert focal.focal and np.allclose(focal.sample_weight(strata), w)
    assert get_balancer("none").sample_weight(strata) is None


def test_double_stage_sampling_balances_stage_one_only():
    """The opacity paper's double-stage sampling: stage 1 on under-sampled, balanced data (a fresh subset each
    epoch); stage 2 and later on the entire unbalanced training set, every item once."""
    strata = np.array([0] * 30 + [1] * 10 + [2] * 5)
    double = get_balancer("double")
    g = torch.Generator().manual_seed(0)
    stage_one = [double.epoch_indices(strata, 0, g) for _ in range(4)]
    for epoch in stage_one:
        assert np.bincount(strata[epoch]).tolist() == [5, 5, 5]
    assert len({tuple(sorted(e)) for e in stage_one}) > 1  # a new draw of the large classes every epoch
    for stage in (1, 2):
        for _ in range(3):
            assert sorted(double.epoch_indices(strata, stage, g)) == list(range(45))
    double.check_stages(2)
    with pytest.raises(ConfigError, match="double.*one stage"):
        double.check_stages(1)


def test_trainer_gives_double_stage_schedule_per_stage(phantom_root, home, tmp_path, monkeypatch):
    """Through the trainer: every stage-1 epoch is balanced, every stage-2 epoch sees all training items."""
    from cxrlab.train import balancing

    seen: list[tuple[int, list[int]]] = []
    original = balancing.Balancer.epoch_indices

    def spy(self, strata, stage, generator):
        pos = original(self, strata, stage, generator)
        seen.append((stage, np.bincount(strata[pos], minlength=4).tolist()))
        return pos

    monkeypatch.setattr(balancing.Balancer, "epoch_indices", spy)
    train("phantom-diagnosis", [phantom_root / "manifest.csv"], tmp_path / "double", show_progress=False,
          overrides=FAST + ["input.size=32", "train.balancing=double", "train.early_stopping_patience=5",
                            "train.stages=[{epochs: 2, train_blocks: 0, lr: 0.01}, "
                            "{epochs: 2, train_blocks: all, lr: 0.001}]"])
    assert [stage for stage, _ in seen] == [0, 0, 1, 1]
    train_counts = seen[2][1]  # stage 2: the whole (unbalanced) training part
    assert all(counts == [min(train_counts)] * 4 for stage, counts in seen if stage == 0)
    assert all(counts == train_counts for stage, counts in seen if stage == 1)
    assert sum(train_counts) > 4 * min(train_counts)  # the phantom's training part is not perfectly balanced


def test_double_balancing_with_one_stage_is_refused(phantom_root, home, tmp_path):
    with pytest.raises(ConfigError, match="double-stage sampling"):
        train("phantom-diagnosis", [phantom_root / "manifest.csv"], tmp_path / "one", show_progress=False,
              overrides=FAST + ["train.balancing=double"])
    assert not (tmp_path / "one").exists()  # refused before any work


def test_cli_train_predict_and_recipes(phantom_root, home, tmp_path):
    from typer.testing import CliRunner

    from cxrlab.cli.main import app

    runner = CliRunner()
    listed = runner.invoke(app, ["recipes", "list"])
    assert listed.exit_code == 0 and "aloe-opacity" in listed.output
    out = tmp_path / "cli"
    args = ["train", "phantom-diagnosis", "--data", str(phantom_root / "manifest.csv"), "--out", str(out)]
    sets = ["--set", "input.size=32", "--set", "train.stages.0.epochs=1", "--set", "train.num_workers=0"]
    result = runner.invoke(app, args + sets)
    assert result.exit_code == 0, result.output
    images = sorted((phantom_root / "images").glob("*.png"))[:3]
    pred = runner.invoke(app, ["predict", str(out), *map(str, images), "--out", str(tmp_path / "p.csv")])
    assert pred.exit_code == 0, pred.output
    table = pd.read_csv(tmp_path / "p.csv")
    assert len(table) == 3 and "prob_covid19" in table.columns
    bad = runner.invoke(app, args[:-1] + [str(tmp_path / "other"), "--set", "train.lrr=1"])
    assert isinstance(bad.exception, ConfigError) and "train.lrr" in str(bad.exception)


def _view_bank(cache: Path) -> dict:
    (path,) = list(cache.glob("views-*.pt"))
    return torch.load(path, map_location="cpu", weights_only=True)


def test_over_sampling_from_cached_augmented_views(phantom_root, home, tmp_path):
    """train.augment_views=K: each training item's K seeded augmented views pass through the frozen part once and
    are cached; every draw takes one of them, so a second run (or another fold) reads the bank and trains alike."""
    common = FAST + ["input.size=32", "train.precision=fp32", "train.channels_last=off", "train.balancing=over",
                     "train.stages=[{epochs: 2, train_blocks: 0, lr: 0.01}, {epochs: 1, train_blocks: 1, lr: 0.003}]",
                     "train.augment_views=3", f"train.cache_dir={tmp_path / 'c'}"]
    first = train("phantom-diagnosis", [phantom_root / "manifest.csv"], tmp_path / "a", show_progress=False,
                  overrides=common)
    bank = _view_bank(tmp_path / "c")
    n_train = (pd.read_csv(first / "split.csv")["split"] == "train").sum()
    outputs = {k: v for k, v in bank.items() if not k.endswith("#targets")}
    assert len(outputs) == 3 * n_train and len(bank) == 6 * n_train  # K views per item, each with its targets
    some = sorted(outputs)[0].rsplit("@view", 1)[0]
    views = [outputs[f"{some}@view{k}"] for k in range(3)]
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[1], views[2])  # the views differ
    # one pass per view: cached once, at stage 2's boundary (a feature map); stage 1 runs the last block on it
    assert views[0].ndim == 3
    hist = pd.read_csv(first / "history.csv")
    assert list(hist["stage"]) == [1, 1, 2] and np.isfinite(hist["train_loss"]).all()
    mtime = next((tmp_path / "c").glob("views-*.pt")).stat().st_mtime_ns
    second = train("phantom-diagnosis", [phantom_root / "manifest.csv"], tmp_path / "b", show_progress=False,
                   overrides=common)
    assert next((tmp_path / "c").glob("views-*.pt")).stat().st_mtime_ns == mtime  # read, not recomputed
    ha, hb = pd.read_csv(first / "history.csv"), pd.read_csv(second / "history.csv")
    np.testing.assert_allclose(ha[["train_loss", "val_loss"]], hb[["train_loss", "val_loss"]], atol=1e-6)
    train("phantom-diagnosis", [phantom_root / "manifest.csv"], tmp_path / "u", show_progress=False,
          overrides=[*common[:-2], f"train.cache_dir={tmp_path / 'u_cache'}"])
    assert not list((tmp_path / "u_cache").glob("views-*.pt"))  # K = 0: a fresh augmentation every draw


def test_mirrored_views_carry_swapped_side_targets(phantom_root, home, tmp_path):
    """A cached view that is mirrored carries the mirrored targets: the patient-right grade of a flipped view is
    the left lung's grade (as in a fresh augmentation)."""
    overrides = FAST + ["input.size=32", "input.roi=none", "model.backbone=resnet18", "model.weights=none",
                        "train.batch_size=16",
                        "input.augment=[{name: rand_hflip, p: 1.0}]", "train.augment_views=1",
                        "train.stages=[{epochs: 1, train_blocks: 0, lr: 0.01}]", f"train.cache_dir={tmp_path / 'c'}"]
    run = train("aloe-opacity", [phantom_root / "manifest.csv"], tmp_path / "r", show_progress=False,
                overrides=overrides)
    bank = _view_bank(tmp_path / "c")
    grades = load_manifest(phantom_root / "manifest.csv").df.set_index("image")[["opacity_right", "opacity_left"]]
    train_images = set(pd.read_csv(run / "split.csv").query("split == 'train'")["image"])
    checked = 0
    for key, value in bank.items():
        if key.endswith("#targets"):
            image = key.split("#", 1)[0]  # keys: <image>#<side>@view<k>#targets
            assert image in train_images  # only training items have views
            right, left = grades.loc[image]
            if np.isfinite(right) and np.isfinite(left) and right != left:
                assert value.tolist() == [left, right]
                checked += 1
    assert checked > 0
