"""Ensemble runs end to end on the phantom (issue #18): `cxrlab train <ensemble recipe> --data M1 --data M2`
pools both manifests and splits them by patient into folds shared by every learner; out-of-fold probabilities
never come from a model that trained on that patient; `cxrlab predict` (installed command, subprocess) writes
prob_<class> columns; `cxrlab evaluate` reads the run; a killed run resumes per finished fold; bad recipes
fail with one clear line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxrlab.data import schema
from cxrlab.ensemble import LeakageError
from cxrlab.errors import ConfigError
from cxrlab.recipes.loader import load_recipe
from cxrlab.train import ensemble as ens

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ["covid19", "viral", "bacterial", "normal"]
CLI = str(Path(sys.executable).parent / "cxrlab")
FAST = {"train": {"num_workers": 0, "batch_size": 8, "stages": [{"epochs": 1, "train_blocks": "all", "lr": 0.003}]}}


def _recipe(tmp: Path, **changes) -> Path:
    raw = {
        "kind": "ensemble", "name": "tiny-ensemble", "seed": 0, "folds": 3, "val_fraction": 0.25,
        "data": {"extra": "pooled"},
        "task": {"kind": "diagnosis", "column": "finding", "classes": CLASSES, "class_map": {"viral_other": "viral"}},
        "base": {"input": {"size": 32, "roi": "none"}, "model": {"backbone": "pasa_cnn", "weights": "none"}, **FAST},
        "learners": [
            {"name": "global"},
            {"name": "patch", "recipe": {"input": {"size": 32, "patches": {"canvas": 64, "size": 32, "count": 4,
                                                                            "train_count": 2}}}},
        ],
        "combiner": {"name": "neural_tanh", "options": {"epochs": 20}},
        "baselines": [{"name": "mean"}, {"name": "vote"}, {"name": "stacking"}],
    }
    raw.update(changes)
    path = tmp / "ensemble.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def two_manifests(phantom_root, tmp_path_factory) -> tuple[Path, Path]:
    """The phantom split by patient into two manifests (absolute paths); M2 has two rows outside the classes
    (one fungal, one viral_other that the class_map makes viral)."""
    df = pd.read_csv(phantom_root / "manifest.csv")
    for c in df.columns:
        if (c == schema.IMAGE or c.startswith("mask_")) and df[c].notna().any():
            df[c] = df[c].map(lambda p: str(phantom_root / p) if isinstance(p, str) and p else p)
    patients = sorted(df[schema.PATIENT_ID].astype(str).unique())
    second = df[schema.PATIENT_ID].astype(str).isin(patients[::2])
    m1, m2 = df[~second].copy(), df[second].reset_index(drop=True)
    m2.loc[0, "finding"] = "fungal"
    m2.loc[1, "finding"] = "viral_other"
    m2["source_dataset"] = "second"
    out = tmp_path_factory.mktemp("manifests")
    m1.to_csv(out / "m1.csv", index=False)
    m2.to_csv(out / "m2.csv", index=False)
    return out / "m1.csv", out / "m2.csv"


@pytest.fixture(scope="module")
def ensemble_run(two_manifests, phantom_root, cxrlab_home, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ensemble")
    recipe = _recipe(tmp)
    out = tmp / "run"
    m1, m2 = two_manifests
    proc = subprocess.run([CLI, "train", str(recipe), "--data", str(m1), "--data", str(m2), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "learner patch, fold 3/3" in proc.stderr  # progress lines
    return out


def test_ensemble_run_directory(ensemble_run):
    for name in ("recipe.yaml", "folds.csv", "oof.parquet", "predictions.parquet", "metrics.json", "model.json",
                 "data_filter.json", "ensemble.json", "combiners/neural_tanh.pkl", "combiners/stacking.pkl"):
        assert (ensemble_run / name).is_file(), name
    for learner in ("global", "patch"):
        for k in range(3):
            assert (ensemble_run / "learners" / learner / f"fold{k}" / "checkpoints" / "best.pt").is_file()
    metrics = json.loads((ensemble_run / "metrics.json").read_text())
    assert set(metrics["learners"]) == {"global", "patch"}
    assert metrics["software"]["torch"] and metrics["seed"] == 0
    assert set(metrics["combiners"]) == {"neural_tanh", "mean", "vote", "stacking"}
    scores = metrics["combiners"]["neural_tanh"]
    assert len(scores["per_fold"]) == 3 and 0 <= scores["mean"]["macro_f1"] <= 1
    report = json.loads((ensemble_run / "data_filter.json").read_text())
    assert report["rows_dropped"] == 1 and report["dropped_by_source_label"] == {"second / fungal": 1}


def test_pooled_manifests_are_split_by_patient(ensemble_run, two_manifests):
    folds = pd.read_csv(ensemble_run / "folds.csv", dtype={schema.PATIENT_ID: str})
    assert folds.groupby(schema.PATIENT_ID)["fold"].nunique().max() == 1
    m2 = pd.read_csv(two_manifests[1])
    second = folds[schema.IMAGE].isin(m2[schema.IMAGE])
    assert second.sum() == len(m2) - 1                 # every M2 row but the fungal one is in the folds ...
    assert folds.loc[second, "fold"].nunique() == 3    # ... spread over the folds: pooled, not train-only
    assert "viral" in set(folds.loc[folds[schema.IMAGE] == m2.loc[1, schema.IMAGE], "_class"])
    for k in range(3):
        split = pd.read_csv(ensemble_run / "splits" / f"fold{k}.csv", dtype={schema.PATIENT_ID: str})
        merged = split.merge(folds, on=[schema.IMAGE, schema.PATIENT_ID])
        assert (merged.loc[merged["split"] == "test", "fold"] == k).all()
        assert (merged.loc[merged["split"] != "test", "fold"] != k).all()


def test_oof_never_from_a_model_that_saw_the_patient(ensemble_run):
    oof = pd.read_parquet(ensemble_run / "oof.parquet")
    for (learner, fold), part in oof.groupby(["learner", "fold"]):
        split = pd.read_csv(ensemble_run / "learners" / learner / f"fold{fold}" / "split.csv",
                            dtype={schema.PATIENT_ID: str})
        trained = set(split.loc[split["split"] != "test", schema.PATIENT_ID])
        assert not trained & set(part[schema.PATIENT_ID].astype(str)), (learner, fold)
    # and the assembly refuses a probability whose model trained on that patient
    cfg = load_recipe(ensemble_run / "recipe.yaml", kind="ensemble")
    assignment = pd.read_csv(ensemble_run / "folds.csv", dtype={schema.PATIENT_ID: str})
    preds = ens._fold_predictions(cfg, ensemble_run, assignment)
    bad = preds[0]
    other = assignment[assignment["fold"] != bad.fold].iloc[:1]  # a patient the fold-`bad.fold` model trained on
    leaked = type(bad)(bad.learner, bad.fold, [*bad.images, other[schema.IMAGE].iloc[0]],
                       np.vstack([bad.probs, np.full((1, 4), 0.25)]), bad.train_folds)
    from cxrlab.ensemble import assemble_oof

    with pytest.raises(LeakageError):
        assemble_oof(assignment, [leaked, *preds[1:]])


def test_predict_on_ensemble_run_installed_cli(ensemble_run, two_manifests, tmp_path):
    out = tmp_path / "table.csv"
    proc = subprocess.run([CLI, "predict", str(ensemble_run), str(two_manifests[0]), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(out)
    probs = table[[f"prob_{c}" for c in CLASSES]].to_numpy()
    assert len(table) == len(pd.read_csv(two_manifests[0]))
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5) and (probs >= 0).all()
    assert (table["pred_diagnosis"] == np.array(CLASSES)[probs.argmax(1)]).all()
    assert {"global.prob_covid19", "patch.prob_normal"} <= set(table.columns)
    # the combiner's output, not a copy of one learner's
    model = ens.load_ensemble(ensemble_run)
    learner = table[[f"global.prob_{c}" for c in CLASSES]].to_numpy()[:, None]
    patch = table[[f"patch.prob_{c}" for c in CLASSES]].to_numpy()[:, None]
    assert np.allclose(model.combiner.predict(np.concatenate([learner, patch], axis=1)), probs, atol=1e-5)


def test_evaluate_reads_the_ensemble_run(ensemble_run, tmp_path):
    proc = subprocess.run([CLI, "evaluate", str(ensemble_run), "--no-gallery", "--n-boot", "20",
                           "--out", str(tmp_path / "eval")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_resume_keeps_finished_folds_and_retrains_missing(ensemble_run, two_manifests, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(ensemble_run, copy)
    kept = copy / "learners" / "global" / "fold0" / "checkpoints" / "best.pt"
    stamp = kept.stat().st_mtime_ns
    shutil.rmtree(copy / "learners" / "patch" / "fold2")   # as if killed before that fold's first checkpoint
    (copy / "ensemble.json").unlink()
    proc = subprocess.run([CLI, "train", "ignored", "--data", str(two_manifests[0]), "--data",
                           str(two_manifests[1]), "--out", str(copy), "--resume"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "learner global, fold 1/3: kept" in proc.stderr and "learner patch, fold 3/3: trained" in proc.stderr
    assert kept.stat().st_mtime_ns == stamp and (copy / "ensemble.json").is_file()


def test_reuse_takes_identical_fold_models_and_trains_changed_learners(ensemble_run, two_manifests, tmp_path):
    """A new run whose recipe changes only the patch learner takes the global learner's fold models from the old
    run (same files, same out-of-fold probabilities) and trains the patch learner again."""
    raw = yaml.safe_load((ensemble_run / "recipe.yaml").read_text())
    raw["learners"][1]["recipe"]["train"] = {"stages": [{"epochs": 1, "train_blocks": "all", "lr": 0.001}]}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(raw))
    # the old run's third global fold model says it was trained with another torch: it is trained again
    old = tmp_path / "old"
    shutil.copytree(ensemble_run, old)
    fold_metrics = old / "learners" / "global" / "fold2" / "metrics.json"
    recorded = json.loads(fold_metrics.read_text())
    recorded["run"]["software"]["torch"] = "1.13.0"
    fold_metrics.write_text(json.dumps(recorded))
    out = tmp_path / "run"
    proc = subprocess.run([CLI, "train", str(changed), "--data", str(two_manifests[0]), "--data",
                           str(two_manifests[1]), "--out", str(out), "--reuse", str(old)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = " ".join(proc.stderr.split())
    for k in (1, 2):
        assert f"learner global, fold {k}/3: reused from" in log
    assert "learner global, fold 3: not reused" in log and "torch 1.13.0 there" in log
    assert "learner global, fold 3/3: trained" in log
    for k in (1, 2, 3):
        assert f"learner patch, fold {k}/3: trained" in log
    assert "not reused" in log and "its learner recipe differs" in log
    ensemble_run = old  # what was reused comes from the copy
    old_ckpt = ensemble_run / "learners" / "global" / "fold1" / "checkpoints" / "best.pt"
    new_ckpt = out / "learners" / "global" / "fold1" / "checkpoints" / "best.pt"
    assert new_ckpt.read_bytes() == old_ckpt.read_bytes()
    assert json.loads((out / "learners" / "global" / "fold1" / "reused_from.json").read_text())["run"] == \
        str(ensemble_run.resolve())
    old_oof, new_oof = (pd.read_parquet(r / "oof.parquet") for r in (ensemble_run, out))
    cols = [f"prob_{c}" for c in CLASSES]
    pick = [schema.IMAGE, *cols]
    a = old_oof[old_oof.learner == "global"][pick].sort_values(schema.IMAGE).reset_index(drop=True)
    b = new_oof[new_oof.learner == "global"][pick].sort_values(schema.IMAGE).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    # the patch learner was trained again with its new learning rate, not copied
    assert not (out / "learners" / "patch" / "fold0" / "reused_from.json").exists()
    assert yaml.safe_load((out / "learners" / "patch" / "fold0" / "recipe.yaml").read_text())[
        "train"]["stages"][0]["lr"] == 0.001


def test_reuse_refuses_what_it_cannot_take(ensemble_run, two_manifests, tmp_path):
    recipe = _recipe(tmp_path)
    proc = subprocess.run([CLI, "train", str(recipe), "--data", str(two_manifests[0]), "--out", str(tmp_path / "r"),
                           "--reuse", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr + proc.stdout
    assert "not an ensemble run directory" in proc.stderr + proc.stdout
    proc = subprocess.run([CLI, "train", "cs230-diagnosis", "--data", str(two_manifests[0]), "--out",
                           str(tmp_path / "single"), "--reuse", str(ensemble_run)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr + proc.stdout
    assert "--reuse applies to ensemble recipes" in proc.stderr + proc.stdout


@pytest.mark.parametrize("change, message", [
    ({"data": {"extra": "train_only"}}, "data.extra: pooled"),
    ({"learners": [{"name": "a", "recipe": {"model": {"backbone": "pasa_cnn", "dropuot": 0.1}}}]}, "dropuot"),
    ({"combiner": {"name": "averaging"}}, "averaging"),
    ({"task": {"kind": "binary", "column": "went_icu"}}, "kind: diagnosis"),
    ({"learners": [{"name": "a"}, {"name": "a"}]}, "used twice"),
])
def test_bad_ensemble_recipe_is_one_clear_line(tmp_path, two_manifests, change, message):
    recipe = _recipe(tmp_path, **change)
    with pytest.raises(ConfigError, match=message):
        load_recipe(recipe, kind="ensemble")
    proc = subprocess.run([CLI, "train", str(recipe), "--data", str(two_manifests[0]), "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr + proc.stdout
    assert message in proc.stderr + proc.stdout


def test_single_model_tools_refuse_an_ensemble_clearly(ensemble_run):
    from cxrlab.errors import InputError
    from cxrlab.train import load_run

    with pytest.raises(InputError, match="is an ensemble run.*learners/<name>/fold<k>"):
        load_run(ensemble_run)


@pytest.fixture(scope="module")
def ensemble_service(ensemble_run, service_runs, tmp_path_factory):
    from cxrlab.serve import load_service_config, write_service_config
    from cxrlab.serve.pipeline import AnalysisPipeline

    config = write_service_config(tmp_path_factory.mktemp("svc") / "service.yaml", lung_run=service_runs["lung"],
                                  diagnosis_run=ensemble_run)
    return AnalysisPipeline.from_config(load_service_config(config))


def test_the_service_serves_an_ensemble_as_cxrlab_predict_does(ensemble_service, ensemble_run, lung_stage_rows,
                                                               phantom_root, tmp_path):
    """The service's diagnosis = the run's combiner over the learners' fold-mean probabilities: the numbers
    ``EnsembleModel.predict`` gives for the same file with the lung masks the service's lung stage drew (patch
    positions depend on the mask); plus a heatmap on the image and a per-learner breakdown."""
    df = pd.read_csv(phantom_root / "manifest.csv").iloc[[0, 3]]
    table = lung_stage_rows([phantom_root / p for p in df[schema.IMAGE]], tmp_path)
    rows = table.to_dict("records")
    expected = ens.load_ensemble(ensemble_run).predict(table)
    for row_in, (_, row) in zip(rows, expected.iterrows()):
        analysis = ensemble_service.analyze(Path(row_in[schema.IMAGE]).read_bytes(), heatmap=True)
        report = analysis.report
        got = report["diagnosis"]["probabilities"]
        assert list(got) == CLASSES
        np.testing.assert_allclose([got[c] for c in CLASSES], [row[f"prob_{c}"] for c in CLASSES], atol=1e-5)
        assert report["diagnosis"]["predicted"] == row["pred_diagnosis"]
        outputs = report["diagnosis"]["outputs"]
        for column in ("global.prob_viral", "patch.prob_covid19", "patch.prob_bacterial"):
            np.testing.assert_allclose(outputs[column], row[column], atol=1e-5)
        heat = report["heatmap"]
        assert heat["shown_on_image"] and "mean of 6 member maps" in heat["computed"]
        assert heat["concordance"] is None or 0 <= heat["concordance"] <= 1
        assert "heatmap" in analysis.images


def test_the_ensemble_card_names_its_members_and_engine(ensemble_service):
    card = next(c for c in ensemble_service.model_cards() if c["role"] == "diagnosis")
    assert card["members"] == {"global": 3, "patch": 3} and card["combiner"] == "neural_tanh"
    assert card["engine"]["name"] == "torch-fp32" and "ensemble" in card["engine"]["why"]
    assert card["version"].startswith("run@") and len(card["version"]) == len("run@") + 12
    assert "macro_f1" in json.dumps(card["validation_metrics"])


def test_serve_and_export_take_an_ensemble_installed_cli(ensemble_run, tmp_path):
    from cxrlab.serve.stages import detect_role

    assert detect_role(ensemble_run) == "diagnosis"
    copy = tmp_path / "run"
    shutil.copytree(ensemble_run, copy)
    proc = subprocess.run([CLI, "export", str(copy)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((copy / "export.json").read_text())
    assert len(report["models"]) == 6 and all(m["passed"] for m in report["models"])
    assert (copy / "learners" / "patch" / "fold2" / "model.onnx").is_file()


@pytest.fixture(scope="module")
def ensemble_study(two_manifests, tmp_path_factory, cxrlab_home):
    """The same tiny ensemble recipe as a study: every (learner, fold) one trial on 2-worker local Ray."""
    import ray

    from cxrlab.study.engine import ensure_ray
    from cxrlab.study.ensemble import run_ensemble_study

    tmp = tmp_path_factory.mktemp("ensemble_study")
    lines: list[str] = []
    ensure_ray(num_cpus=2)
    try:
        run_ensemble_study(_recipe(tmp), list(two_manifests), tmp / "study", log=lines.append)
    finally:
        ray.shutdown()
    return tmp / "study", lines


def test_an_ensemble_recipe_runs_as_a_study_on_ray(ensemble_study, ensemble_run):
    out, lines = ensemble_study
    best = out / "best"
    assert (best / "ensemble.json").is_file() and (best / "combiners" / "neural_tanh.pkl").is_file()
    # the same patient folds as `cxrlab train` gives the recipe, shared by every learner (one split per fold)
    pd.testing.assert_frame_equal(pd.read_csv(best / "folds.csv"), pd.read_csv(ensemble_run / "folds.csv"))
    for learner in ("global", "patch"):
        for k in range(3):
            fold_dir = best / "learners" / learner / f"fold{k}"
            trial = json.loads((fold_dir / "trial.json").read_text())
            assert trial["combo"] == learner and trial["fold"] == k and 0 <= trial["scores"]["macro_f1"] <= 1
            split = pd.read_csv(fold_dir / "split.csv")
            shared = pd.read_csv(best / "splits" / f"fold{k}.csv")
            assert set(split.loc[split["split"] == "test", "image"]) == \
                set(shared.loc[shared["split"] == "test", "image"])
    progress = [ln for ln in lines if "fold" in ln and "macro-F1" in ln]
    assert len(progress) == 6 and any("6/6" in ln for ln in progress)  # one line per trial, overall bar
    report = (out / "report.md").read_text()
    assert "learner patch" in report and "combiner neural_tanh" in report and "±" in report
    assert (out / "macro_f1_per_fold.png").is_file() and "data:image/png" in (out / "report.html").read_text()


def test_an_ensemble_study_resumes_and_refuses_presets(ensemble_study, two_manifests, tmp_path, cxrlab_home):
    import ray

    from cxrlab.study.engine import ensure_ray
    from cxrlab.study.ensemble import run_ensemble_study

    out, _ = ensemble_study
    copy = tmp_path / "study"
    shutil.copytree(out, copy)
    kept = copy / "best" / "learners" / "global" / "fold0" / "checkpoints" / "best.pt"
    stamp = kept.stat().st_mtime_ns
    shutil.rmtree(copy / "best" / "learners" / "patch" / "fold1")  # as if killed during that trial
    shutil.rmtree(copy / "best" / "ray")                            # ... before Tune saved its state
    (copy / "best" / "ensemble.json").unlink()
    lines: list[str] = []
    ensure_ray(num_cpus=2)
    try:
        run_ensemble_study("ignored", list(two_manifests), copy, log=lines.append)
    finally:
        ray.shutdown()
    assert (copy / "best" / "ensemble.json").is_file() and kept.stat().st_mtime_ns == stamp
    assert json.loads((copy / "study.json").read_text())["recipe"].endswith("ensemble.yaml")  # not "ignored"
    assert [ln for ln in lines if "macro-F1" in ln and "fold" in ln][0].split(":")[0].endswith("patch fold 1")
    # the installed command: a budget preset makes no sense for an ensemble recipe (its budget is the recipe)
    proc = subprocess.run([CLI, "study", "run", "flannel-patch-quick", "--data", str(two_manifests[0]), "--out",
                           str(tmp_path / "s2"), "--preset", "quick"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr + proc.stdout
    assert "an ensemble recipe carries its budget itself" in proc.stderr + proc.stdout
    proc = subprocess.run([CLI, "study", "report", str(copy)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_training_options_an_ensemble_cannot_use_are_refused(tmp_path, two_manifests):
    recipe = _recipe(tmp_path)
    proc = subprocess.run([CLI, "train", str(recipe), "--data", str(two_manifests[0]), "--out", str(tmp_path / "r"),
                           "--split", str(two_manifests[0])], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr + proc.stdout
    assert "--split not supported for ensemble recipes" in proc.stderr + proc.stdout
    assert not (tmp_path / "r").exists()


def test_join_same_films_keeps_a_shared_film_on_one_side(tmp_path):
    """One film under two patient ids (found on the real data: an ieee8023 film listed twice) must not be in a
    fold's training part and its test part at once."""
    from cxrlab.io import write_png

    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        path = tmp_path / f"film{i}.png"
        write_png(path, rng.random((40, 40)).astype(np.float32))
        rows.append({schema.IMAGE: str(path), schema.PATIENT_ID: f"p{i:02d}", ens.CLASS: ["a", "b"][i % 2]})
    copy = tmp_path / "film3_copy.png"
    shutil.copyfile(rows[3][schema.IMAGE], copy)  # p03's film again, re-uploaded under patient p20
    rows.append({schema.IMAGE: str(copy), schema.PATIENT_ID: "p20", ens.CLASS: "b"})
    df = pd.DataFrame(rows)
    cfg = load_recipe("flannel-patch-quick", kind=ens.KIND).model_copy(update={"folds": 4})
    joined = ens.fold_assignment(cfg.model_copy(update={"join_same_films": True}), df)
    pair = joined[schema.PATIENT_ID].isin(["p03", "p20"])
    assert joined.loc[pair, "fold"].nunique() == 1
    assert set(joined.loc[pair, ens.SPLIT_UNIT]) == {"p03+p20"}
    for k in range(cfg.folds):
        assert ens.fold_split(cfg, joined, k).loc[pair.to_numpy(), "split"].nunique() == 1
    # without the option the two ids are independent patients (what validate --content warns about)
    plain = ens.fold_assignment(cfg, df)
    assert ens.SPLIT_UNIT not in plain
    assert sorted(plain[schema.PATIENT_ID]) == sorted(df[schema.PATIENT_ID])


def test_reuse_refuses_fold_models_trained_with_other_library_versions():
    """A fold model trained with another torch (or with no record) is retrained, and the log says why."""
    from cxrlab.train.ensemble import software_difference
    from cxrlab.versions import software_versions

    here = software_versions()
    assert software_difference(here) is None
    assert software_difference({**here, "cxrlab_commit": "0123456789ab", "platform": "elsewhere"}) is None
    older = {**here, "torch": "1.13.0"}
    assert software_difference(older) == f"trained with other library versions: torch 1.13.0 there, {here['torch']} here"
    assert "records no software versions" in software_difference(None)
    assert "numpy unrecorded there" in software_difference({k: v for k, v in here.items() if k != "numpy"})
