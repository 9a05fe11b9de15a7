"""The ICU-admission study's correctness parts (issue #17): fused (train-only) rows never reach val/test in any
split or fold, a patient with primary and fused rows never straddles, ``data.label_map``, ``--split``,
``data.before_event``, lung masks predicted once with ``--lung-model``, and the paper's CLAHE default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrlab.data import schema
from cxrlab.data.fusion import fuse_manifests as data_fuse
from cxrlab.data.manifest import Manifest, load_manifest, save_manifest
from cxrlab.errors import ConfigError, InputError
from cxrlab.recipes import load_recipe
from cxrlab.train.data import TRAIN_ONLY, before_event_filter, build_table, split_from_table
from cxrlab.train.inputs import InputPipeline
from cxrlab.train.trainer import build_tasks

CLI = Path(sys.executable).parent / "cxrlab"
FAST = ["train.num_workers=0", "input.size=32", "train.stages.0.epochs=1"]


def _table(recipe, manifests, split=None):
    pipeline = InputPipeline(recipe.input)
    return build_table(recipe, manifests, build_tasks(recipe, pipeline), pipeline.per_image, split)


@pytest.fixture(scope="module")
def fused(phantom_manifest) -> Manifest:
    """The phantom as primary data plus a second copy of it as fused phantom rows (``cxrlab data fuse``)."""
    secondary = phantom_manifest.df.copy()
    secondary[schema.PATIENT_ID] = "FUSED-" + secondary[schema.PATIENT_ID].astype(str)
    secondary[schema.SOURCE_DATASET] = "phantom-fused"
    secondary[schema.IMAGE] = secondary[schema.IMAGE].astype(str) + "#fused"  # other films (never read here)
    return data_fuse(phantom_manifest, [(Manifest(secondary, None), None)]).manifest


@pytest.mark.parametrize("split", ["ratios", *[f"fold{k}" for k in range(5)]])
def test_fused_rows_never_reach_val_or_test(fused, split):
    sets = [] if split == "ratios" else ["split.folds=5", f"split.fold={split[-1]}"]
    recipe = load_recipe("phantom-diagnosis", sets)
    table, report = _table(recipe, [fused])
    df = table.df
    fused_rows = df[schema.PATIENT_ID].str.startswith("FUSED-")
    assert fused_rows.sum() == (fused.df["train_only"] == 1).sum()  # none dropped: no fused patient is primary
    assert set(df.loc[fused_rows, "split"]) == {"train"}
    assert {"train", "val", "test"} <= set(df.loc[~fused_rows, "split"])
    assert df[TRAIN_ONLY].sum() == fused_rows.sum() and report["train_only_dropped"] == 0


def test_every_fold_tests_each_primary_patient_once(fused):
    tested = []
    for k in range(5):
        df = _table(load_recipe("phantom-diagnosis", ["split.folds=5", f"split.fold={k}"]), [fused])[0].df
        tested += list(df.loc[df["split"] == "test", schema.PATIENT_ID].unique())
    assert len(tested) == len(set(tested)) == fused.df.loc[fused.df["train_only"] == 0, schema.PATIENT_ID].nunique()


def test_patient_with_primary_and_fused_rows_does_not_straddle(phantom_manifest):
    # fused rows for the *same* patients (a second dataset that shares some patients): image copies of every
    # patient's films, marked train-only; the primary rows decide the patient's part
    primary = phantom_manifest.df.copy()
    extra = primary.copy()
    extra[schema.IMAGE] = extra[schema.IMAGE].astype(str) + "#fused"
    extra["train_only"] = 1
    both = Manifest(pd.concat([primary.assign(train_only=0), extra], ignore_index=True), None)
    for sets in ([], ["split.folds=4", "split.fold=2"]):
        table, report = _table(load_recipe("phantom-diagnosis", sets), [both])
        df = table.df
        fused_rows = df[schema.IMAGE].str.endswith("#fused")
        part_of = df[~fused_rows].groupby(schema.PATIENT_ID)["split"].first()
        held_out = set(part_of[part_of != "train"].index)
        assert held_out and set(df.loc[fused_rows, "split"]) == {"train"}
        assert not set(df.loc[fused_rows, schema.PATIENT_ID]) & held_out  # dropped for held-out patients
        expected = extra[schema.PATIENT_ID].isin(held_out).sum()
        assert report["train_only_dropped"] == expected == len(extra) - fused_rows.sum()


def test_extra_manifest_marked_train_only_by_recipe_follows_the_same_rule(phantom_manifest, tmp_path):
    extra = phantom_manifest.df.copy()  # the same patients again through data.extra: train_only
    extra[schema.IMAGE] = extra[schema.IMAGE].astype(str) + "#extra"
    table, report = _table(load_recipe("phantom-diagnosis"), [phantom_manifest, Manifest(extra, None)])
    df = table.df
    rows = df[schema.IMAGE].str.endswith("#extra")
    assert set(df.loc[rows, "split"]) == {"train"} and report["train_only_dropped"] > 0
    pooled, _ = _table(load_recipe("phantom-diagnosis", ["data.extra=pooled"]),
                       [phantom_manifest, Manifest(extra.assign(patient_id="P2-" + extra["patient_id"]), None)])
    assert set(pooled.df.loc[pooled.df[schema.IMAGE].str.endswith("#extra"), "split"]) > {"train"}


def test_given_split_is_checked(fused, phantom_manifest):
    recipe = load_recipe("phantom-diagnosis")
    df = phantom_manifest.df
    split = df[[schema.IMAGE, schema.PATIENT_ID]].copy()
    patients = sorted(df[schema.PATIENT_ID].unique())
    split["split"] = df[schema.PATIENT_ID].map(
        {p: ("train", "train", "train", "val", "test")[i % 5] for i, p in enumerate(patients)})
    table, _ = _table(recipe, [fused], split)  # fused rows absent from the split: they train
    mine = table.df[~table.df[TRAIN_ONLY]].set_index(schema.IMAGE)["split"]
    assert (mine == split.set_index(schema.IMAGE)["split"].reindex(mine.index)).all()
    with pytest.raises(InputError, match="not in the split"):
        _table(recipe, [fused], split.iloc[1:])
    leaky = pd.concat([split, fused.df.loc[fused.df["train_only"] == 1, [schema.IMAGE, schema.PATIENT_ID]]
                       .head(3).assign(split="test")])
    with pytest.raises(InputError, match="train-only"):
        split_from_table(_table(recipe, [fused])[0].df, leaky)


def test_label_map_maps_values_before_targets(phantom_manifest, other_films, tmp_path):
    extra = other_films(phantom_manifest.df.drop(columns=["went_icu"]), tmp_path / "films")
    extra[schema.PATIENT_ID] = "R-" + extra[schema.PATIENT_ID].astype(str)
    grades = np.array(["negative", "Mild", "moderate", "SEVERE"])
    extra["grade"] = grades[np.arange(len(extra)) % 4]
    recipe = load_recipe("phantom-diagnosis", [
        "tasks=[{kind: binary, column: went_icu}]", "split.stratify=null", "data.rename={grade: went_icu}",
        "data.label_map={grade: {negative: 0, mild: 0, moderate: 0, severe: 1}}"])
    table, _ = _table(recipe, [phantom_manifest, Manifest(extra, None)])
    mapped = table.df[table.df[schema.PATIENT_ID].str.startswith("R-")]
    expected = (extra.set_index(schema.IMAGE)["grade"].str.lower() == "severe").astype(float)
    assert (mapped.set_index(schema.IMAGE)["went_icu"].astype(float) == expected.reindex(mapped[schema.IMAGE])).all()
    primary = table.df[~table.df[schema.PATIENT_ID].str.startswith("R-")]
    assert set(primary["went_icu"].astype(float)) <= {0.0, 1.0}  # the primary labels are untouched
    numeric = load_recipe("phantom-diagnosis", ["data.label_map={went_icu: {0: 0, 1: 0}}",
                                                "tasks=[{kind: binary, column: went_icu}]", "split.stratify=null"])
    assert set(_table(numeric, [phantom_manifest])[0].df["went_icu"].astype(float)) == {0.0}
    bad_value = load_recipe("phantom-diagnosis", ["data.label_map={grade: {negative: 0, mild: 0, moderate: 0}}",
                                                  "data.rename={grade: went_icu}",
                                                  "tasks=[{kind: binary, column: went_icu}]"])
    with pytest.raises(InputError, match="'SEVERE'"):
        _table(bad_value, [phantom_manifest, Manifest(extra, None)])
    clash = load_recipe("phantom-diagnosis", ["data.rename={grade: went_icu}"])
    with pytest.raises(InputError, match="already has the target column"):
        _table(clash, [phantom_manifest, Manifest(extra.assign(went_icu=0), None)])
    bad_column = load_recipe("phantom-diagnosis", ["data.label_map={gradee: {a: 1}}"])
    with pytest.raises(InputError, match="no manifest has") as exc:
        _table(bad_column, [phantom_manifest])
    assert exc.value.field == "gradee"
    with pytest.raises(ConfigError, match="maps no value"):
        load_recipe("phantom-diagnosis", ["data.label_map={grade: {}}"])


def test_before_event_filter_on_a_hand_made_manifest():
    df = pd.DataFrame({
        schema.PATIENT_ID: ["a", "a", "a", "b", "b", "c", "d"],
        schema.OFFSET_DAYS: [0, 3, 5, 1, 2, 4, None],
        "in_icu": ["N", "N", "Y", "n", None, "?", "no"],
        "icu_admission_offset_days": [3, 3, 3, None, None, 10, 2],
    })
    recipe = load_recipe("covid-icu")
    assert recipe.data.before_event.flag == "in_icu"  # on by default in the ICU recipe
    kept, report = before_event_filter(df, recipe.data.before_event)
    assert len(kept) == 6 and report["removed"] == {"in_icu is true": 1}
    assert report["kept_with_unknown_flag"] == 2
    both = load_recipe("covid-icu", ["data.before_event.event_offset=icu_admission_offset_days",
                                     "data.before_event.unknown_flag=drop"]).data.before_event
    kept, report = before_event_filter(df, both)
    # a@3 is on the admission day (removed), a@5 flagged, b@None-flag and c@'?' unknown, d has no film date
    assert sorted(zip(kept[schema.PATIENT_ID], kept[schema.OFFSET_DAYS])) == [("a", 0.0), ("b", 1.0)]
    assert report["rows_removed"] == 5 and report["patients_kept"] == 2
    assert sum(report["removed"].values()) == 5
    absent = before_event_filter(df.drop(columns=["in_icu"]), recipe.data.before_event)[1]
    assert absent["rows_removed"] == 0 and absent["not_applied"] == ["no column 'in_icu'"]
    strict = load_recipe("covid-icu", ["data.before_event.required=true"]).data.before_event
    with pytest.raises(InputError, match="missing column"):
        before_event_filter(df.drop(columns=["in_icu"]), strict)
    with pytest.raises(ConfigError, match="flag"):
        load_recipe("covid-icu", ["data.before_event={offset: offset_days}"])


def test_covid_icu_clahe_follows_the_paper():
    from cxrlab.transforms.intensity import parse_histeq

    recipe = load_recipe("covid-icu")
    cl, gs = parse_histeq(recipe.input.clahe)
    assert (cl, gs) == (0.04, 8) and cl * gs * gs == pytest.approx(2.56)
    pipe = InputPipeline(load_recipe("covid-icu", ["input.clahe=true"]).input)
    assert (pipe.pre[0].clip, pipe.pre[0].grid) == (0.04, 8)


# --- end to end: lung masks predicted once, the event filter recorded, a given split via the installed CLI ---

@pytest.fixture(scope="module")
def lung_run(phantom_root, tmp_path_factory) -> Path:
    from cxrlab.anatomy.train import train_segmentation

    seg = {"arch": "unet", "encoder": "resnet18", "weights": "none", "size": 64, "epochs": 1, "batch_size": 8,
           "samples_per_epoch": 8, "val_max_images": 4, "evaluate_test": False, "seed": 0,
           "manifests": [str(phantom_root / "manifest.csv")]}
    return train_segmentation(seg, out=tmp_path_factory.mktemp("lung") / "lung")


def test_train_with_lung_model_predicts_missing_masks_once(phantom_root, lung_run, cxrlab_home, tmp_path,
                                                          one_torch_thread):
    from cxrlab.train import load_run, train

    df = load_manifest(phantom_root / "manifest.csv").df.copy()
    blank = np.arange(len(df)) % 2 == 0
    for col in ("mask_lungs", "mask_right_lung", "mask_left_lung"):
        df[col] = df[col].astype(object)
        df.loc[blank, col] = None
    df["in_icu"] = np.where(np.arange(len(df)) % 7 == 3, "Y", "N")
    save_manifest(df, tmp_path / "blank.csv")
    recipe = load_recipe("phantom-diagnosis", FAST + ["input.roi=image+mask",
                                                      "data.before_event={flag: in_icu}"])
    run = train(recipe, [tmp_path / "blank.csv"], tmp_path / "run", show_progress=False, lung_model=lung_run)
    report = json.loads((run / "data_filter.json").read_text())
    removed = int((df["in_icu"] == "Y").sum())
    assert report["rows_removed"] == removed and report["removed"] == {"in_icu is true": removed}
    kept = df[df["in_icu"] != "Y"]
    n_blank = int(blank[kept.index].sum())
    masks = report["lung_masks"]
    assert masks["predicted"] == n_blank and masks["from_cache"] == 0 and masks["given"] == len(kept) - n_blank
    assert masks["lung_run"] == str(Path(lung_run).resolve())
    assert len(list((run / "lung_masks" / masks["lung_run_id"]).glob("*.png"))) == 3 * n_blank
    pred = pd.read_parquet(run / "predictions.parquet")
    assert (pred.set_index("image")["view"] == kept.set_index("image")["view"].reindex(pred["image"])).all()
    metrics = json.loads((run / "metrics.json").read_text())["run"]
    assert metrics["lung_masks"]["predicted"] == n_blank and metrics["rows_removed_by_event_filter"] == removed
    # prediction uses the same cache: the same films (by content) are not segmented again
    model = load_run(run)
    films = kept.loc[blank[kept.index], schema.IMAGE].head(3).tolist()
    out = model.predict(films, lung_model=lung_run, mask_cache=run / "lung_masks")
    assert len(out) == 3 and model.lung_masks_report["from_cache"] == 3
    assert model.lung_masks_report["predicted"] == 0
    with pytest.raises(InputError, match="lung mask|mask"):
        train(recipe, [tmp_path / "blank.csv"], tmp_path / "no_lungs", show_progress=False)
    # another fold of a cross-validation sharing the cache segments nothing again
    fold = load_recipe("phantom-diagnosis", FAST + ["input.roi=image+mask", "split.folds=3", "split.fold=1",
                                                    "split.stratify=null"])
    other = train(fold, [tmp_path / "blank.csv"], tmp_path / "fold1", show_progress=False, lung_model=lung_run,
                  mask_cache=run / "lung_masks")
    shared = json.loads((other / "data_filter.json").read_text())["lung_masks"]
    # no event filter in this recipe: only the ICU films the first run had filtered out are new
    assert shared["from_cache"] == n_blank and shared["predicted"] == int(blank.sum()) - n_blank > 0
    assert not (other / "lung_masks").exists()


def test_cli_train_takes_a_split_from_data_split(phantom_root, tmp_path):
    env = {**os.environ, "CXRLAB_HOME": str(tmp_path / "home"), "OMP_WAIT_POLICY": "PASSIVE"}
    manifest = str(phantom_root / "manifest.csv")
    made = subprocess.run([str(CLI), "data", "split", manifest, "--out", str(tmp_path / "split.csv"), "--seed", "3"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert made.returncode == 0, made.stderr
    split = pd.read_csv(tmp_path / "split.csv", dtype={"patient_id": str})
    sets = sum((["--set", s] for s in FAST), [])
    ran = subprocess.run([str(CLI), "train", "phantom-diagnosis", "--data", manifest, "--split",
                          str(tmp_path / "split.csv"), "--out", str(tmp_path / "run"), *sets],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    used = pd.read_csv(tmp_path / "run" / "split.csv", dtype={"patient_id": str})
    assert used.set_index("image")["split"].sort_index().equals(split.set_index("image")["split"].sort_index())
    assert json.loads((tmp_path / "run" / "data_filter.json").read_text())["split_source"] == \
        str((tmp_path / "split.csv").resolve())
    leaky = split.copy()
    first = leaky["patient_id"].iloc[0]
    rows = leaky.index[leaky["patient_id"] == first]
    leaky.loc[rows, "split"] = ["train", "test"] * (len(rows) // 2) + ["train"] * (len(rows) % 2)
    if len(rows) < 2:  # a patient with one film cannot straddle: give it a second row in another part
        leaky = pd.concat([leaky, leaky.loc[rows].assign(image="other.png", split="test")])
    leaky.to_csv(tmp_path / "leaky.csv", index=False)
    bad = subprocess.run([str(CLI), "train", "phantom-diagnosis", "--data", manifest, "--split",
                          str(tmp_path / "leaky.csv"), "--out", str(tmp_path / "bad"), *sets],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "more than one part" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr


# --- the view confound (view-only baseline and within-view AUCs) on hand-made data ---

VIEW_CASES = [("PA", "pa"), (" pa ", "pa"), ("AP", "ap_supine"), ("AP Supine", "ap_supine"), ("AP_ERECT", "ap_supine"),
              ("supine", "ap_supine"), ("L", None), ("lateral", None), (None, None), (float("nan"), None)]


@pytest.mark.parametrize("view, expected", VIEW_CASES)
def test_view_groups(view, expected):
    from cxrlab.evaluate.confound import view_group

    assert view_group(view) == expected


def _confounded(n_patients: int = 60, seed: int = 0) -> pd.DataFrame:
    """ICU patients filmed mostly AP/supine, others mostly PA; the model score carries signal within each view."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_patients):
        icu = int(i % 3 == 0)
        for j in range(2):
            view = "AP Supine" if rng.random() < (0.85 if icu else 0.25) else "PA"
            rows.append({"image": f"p{i}_{j}.png", "patient_id": f"p{i}", "split": "test", "went_icu": icu,
                         "view": view, "prob_went_icu": float(np.clip(0.5 * icu + 0.2 * (view != "PA")
                                                                      + rng.normal(0, 0.25), 0, 1))})
    rows.append({"image": "lat.png", "patient_id": "p0", "split": "test", "went_icu": 1, "view": "LL",
                 "prob_went_icu": 0.9})
    return pd.DataFrame(rows)


def test_view_confound_against_sklearn_on_the_same_films():
    from sklearn.metrics import roc_auc_score

    from cxrlab.evaluate.confound import view_confound

    df = _confounded()
    res = view_confound(df["went_icu"], df["prob_went_icu"], df["view"], df["patient_id"], n_boot=200, seed=1)
    known = df[df["view"] != "LL"]
    assert res["left_out"] == 1 and res["n_images"] == len(known) and res["n_patients"] == 60
    bedside = (known["view"] != "PA").astype(int)
    assert res["view_only_auc"]["value"] == pytest.approx(roc_auc_score(known["went_icu"], bedside))
    assert res["model_auc"]["value"] == pytest.approx(roc_auc_score(known["went_icu"], known["prob_went_icu"]))
    assert res["model_minus_view_auc"]["value"] == pytest.approx(
        res["model_auc"]["value"] - res["view_only_auc"]["value"])
    for group, rows in (("ap_supine", known["view"] != "PA"), ("pa", known["view"] == "PA")):
        sub = known[rows]
        est = res["within_view"][group]
        assert est["value"] == pytest.approx(roc_auc_score(sub["went_icu"], sub["prob_went_icu"]))
        assert est["low"] <= est["value"] <= est["high"] and est["n_boot"] > 100
        assert res["views"][group] == {"images": len(sub), "patients": sub["patient_id"].nunique(),
                                       "positives": int(sub["went_icu"].sum())}
    assert res["view_only_auc"]["value"] > 0.7  # the view alone separates the groups: the point of the check
    est = res["view_only_auc"]
    assert est["low"] < est["value"] < est["high"]


def test_view_confound_in_the_evaluation_of_binary_runs():
    from cxrlab.evaluate.evaluation import evaluate_predictions
    from cxrlab.evaluate.run import Target

    target = Target(name="went_icu", kind="binary", column="went_icu", prob_columns=["prob_went_icu"])
    df = _confounded()
    entry = evaluate_predictions(df, [target], n_boot=50)["targets"]["went_icu"]
    assert entry["view_confound"]["n_images"] == len(df) - 1
    assert set(entry["view_confound"]["within_view"]) == {"ap_supine", "pa"}
    assert "view_confound" not in evaluate_predictions(df.drop(columns=["view"]), [target],
                                                       n_boot=50)["targets"]["went_icu"]


def test_view_confound_in_the_report(tmp_path):
    from cxrlab.evaluate.report import build_report

    df = _confounded()
    df.loc[df.index % 4 == 1, "split"] = "val"
    df.to_parquet(tmp_path / "predictions.parquet")
    (tmp_path / "model.json").write_text(json.dumps({"tasks": [{"kind": "binary", "name": "icu",
                                                                  "column": "went_icu"}]}))
    (tmp_path / "recipe.yaml").write_text("name: sim\nseed: 0\n")
    report = build_report(tmp_path, n_boot=50, gallery=False)
    m = json.loads((report.parent / "metrics.json").read_text())["targets"]["went_icu"]["view_confound"]
    test = df[(df["split"] == "test") & (df["view"] != "LL")]
    assert m["n_images"] == len(test)
    html = report.read_text()
    assert "View confound" in html and "model within pa films" in html and "view only (AP/supine" in html


def test_resumed_run_reuses_its_lung_model_and_mask_cache(phantom_root, lung_run, cxrlab_home, tmp_path,
                                                          one_torch_thread):
    from cxrlab.train import train

    df = load_manifest(phantom_root / "manifest.csv").df.copy()
    df["mask_right_lung"] = None  # no patient-right masks anywhere: every film needs the lung model
    save_manifest(df, tmp_path / "blank.csv")
    recipe = load_recipe("phantom-diagnosis", ["train.num_workers=0", "input.size=32", "train.stages.0.epochs=2",
                                               "input.roi=image+mask"])

    def kill(row: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(recipe, [tmp_path / "blank.csv"], tmp_path / "cut", show_progress=False, lung_model=lung_run,
              on_epoch_end=kill)
    first = json.loads((tmp_path / "cut" / "data_filter.json").read_text())["lung_masks"]
    assert first["predicted"] == len(df) and first["given"] == 0
    run = train(recipe, [tmp_path / "blank.csv"], tmp_path / "cut", resume=True, show_progress=False)  # no lung run
    again = json.loads((run / "lung_masks" / "resume_report.json").read_text())
    assert again["predicted"] == 0 and again["from_cache"] == len(df)
    assert json.loads((run / "metrics.json").read_text())["run"]["epochs"] == 2


# --- paired comparison of an arm against the baseline ---

def _delong_brute_force(y, a, b):
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)

    def psi(p):
        d = p[pos][:, None] - p[neg][None, :]
        return (d > 0) + 0.5 * (d == 0)

    comps = [psi(p) for p in (a, b)]
    v10 = np.stack([c.mean(axis=1) for c in comps])
    v01 = np.stack([c.mean(axis=0) for c in comps])
    cov = np.cov(v10) / len(pos) + np.cov(v01) / len(neg)
    diff = v10[1].mean() - v10[0].mean()
    return diff / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])


def test_paired_auc_comparison():
    from scipy.stats import norm
    from sklearn.metrics import roc_auc_score

    from cxrlab.evaluate.compare import compare_aucs, delong_test

    rng = np.random.default_rng(0)
    n = 240
    y = (rng.random(n) < 0.35).astype(int)
    weak = np.round((0.3 * y + rng.random(n)) / 1.3, 2)  # rounded: ties are counted half, as in the AUC
    strong = np.round((1.2 * y + rng.random(n)) / 2.2, 2)
    res = delong_test(y, weak, strong)
    assert res["auc_a"] == pytest.approx(roc_auc_score(y, weak)) and res["auc_b"] == pytest.approx(
        roc_auc_score(y, strong))
    z = _delong_brute_force(y, weak, strong)
    assert res["z"] == pytest.approx(z) and res["p"] == pytest.approx(2 * norm.sf(abs(z)))
    same = delong_test(y, weak, weak)
    assert same["z"] == 0 and same["p"] == 1
    pid = [f"p{i // 2}" for i in range(n)]
    cmp = compare_aucs(y, weak, strong, pid, n_boot=300, seed=0)
    assert cmp["n_patients"] == n // 2 and cmp["difference"]["value"] == pytest.approx(res["auc_b"] - res["auc_a"])
    assert 0 < cmp["difference"]["low"] < cmp["difference"]["value"] < cmp["difference"]["high"]
    assert cmp["bootstrap_p"] < 0.01 and cmp["delong"]["p"] < 0.01
    close = compare_aucs(y, weak, np.clip(np.round(weak + rng.normal(0, 0.01, n), 3), 0, 1), pid, n_boot=300, seed=0)
    assert close["difference"]["low"] < 0 < close["difference"]["high"] and close["bootstrap_p"] > 0.05
    with pytest.raises(InputError, match="both classes"):
        compare_aucs(np.zeros(10), weak[:10], strong[:10], pid[:10])


def test_data_split_leaves_out_fused_rows_of_held_out_patients(phantom_manifest):
    from cxrlab.data.fusion import kfold_fused, split_fused

    primary = phantom_manifest.df.copy()
    extra = primary.copy()
    extra[schema.IMAGE] = extra[schema.IMAGE].astype(str) + "#fused"
    df = pd.concat([primary.assign(train_only=0), extra.assign(train_only=1)], ignore_index=True)
    parts = split_fused(df, seed=0, stratify="finding")
    fused = df["train_only"] == 1
    prim_part = pd.Series(parts[~fused].to_numpy(), index=df.loc[~fused, schema.PATIENT_ID]).groupby(level=0).first()
    held = prim_part.index[prim_part != "train"]
    assert len(held) and parts[fused & df[schema.PATIENT_ID].isin(held)].isna().all()
    assert (parts[fused & ~df[schema.PATIENT_ID].isin(held)] == "train").all() and parts[~fused].notna().all()
    # the split it makes trains the same way through --split: nothing listed is dropped, nothing missing fails
    kept = df[parts.notna()].assign(split=parts[parts.notna()])
    table, report = _table(load_recipe("phantom-diagnosis"), [Manifest(df, None)], kept)
    assert report["train_only_dropped"] == int(parts.isna().sum())
    with pytest.raises(InputError, match="both primary and fused"):
        kfold_fused(df, k=5)


# --- the embedding + small classifier arm ---

def test_embedding_head_cross_validation_keeps_fused_rows_in_training(one_torch_thread):
    from sklearn.metrics import roc_auc_score

    from cxrlab.train.embedding_head import HeadConfig, cross_validate_head

    rng = np.random.default_rng(0)
    rows, vecs = [], []
    for i in range(80):
        icu = int(i % 4 == 0)  # imbalanced: class weights matter
        for j in range(2):
            rows.append({"image": f"p{i}_{j}.png", "patient_id": f"p{i}", "went_icu": icu, "train_only": 0})
            vecs.append(rng.normal(0, 1, 16) + 2.0 * icu * np.eye(16)[0])
    for i in range(30):  # fused rows: 10 of new patients, 20 of primary patients (dropped where those are tested)
        pid = f"f{i}" if i < 10 else f"p{i}"
        rows.append({"image": f"fused{i}.png", "patient_id": pid, "went_icu": int(i % 2), "train_only": 1})
        vecs.append(rng.normal(0, 1, 16) + 2.0 * (i % 2) * np.eye(16)[0])
    meta = pd.DataFrame(rows)
    meta.loc[3, "went_icu"] = np.nan  # unlabelled: never tested
    oof = cross_validate_head(np.array(vecs, np.float32), meta, "went_icu", k=4, seed=0,
                              cfg=HeadConfig(hidden=16, epochs=60, patience=10))
    assert len(oof) == 159 and not oof["image"].str.startswith("fused").any()
    assert oof.groupby("patient_id")["fold"].nunique().max() == 1 and sorted(oof["fold"].unique()) == [0, 1, 2, 3]
    assert roc_auc_score(oof["went_icu"], oof["prob_went_icu"]) > 0.8
    folds = oof.attrs["folds"]
    assert all(f["pos_weight"] == pytest.approx(3.0, rel=0.3) for f in folds)
    for f in folds:
        tested = set(oof.loc[oof["fold"] == f["fold"], "patient_id"])
        fused_of_tested = sum(1 for i in range(10, 30) if f"p{i}" in tested)
        assert f["train_only_dropped"] >= fused_of_tested and f["train_only_used"] + f["train_only_dropped"] == 30
    with pytest.raises(InputError, match="0/1"):
        cross_validate_head(np.zeros((4, 2), np.float32), meta.head(4).assign(went_icu=2), "went_icu", k=2)


BIN_CASES = [  # (value, expected label) for edges [3, 6] and labels [none, moderate, severe]
    (0, "none"), (2.99, "none"), (3, "moderate"), (5.5, "moderate"), (6, "severe"), (8, "severe"), (None, None),
    ("4", "moderate"),
]


def test_label_bins_cut_a_severity_score():
    from cxrlab.train.data import bin_values

    values = pd.Series([v for v, _ in BIN_CASES], dtype=object)
    out = bin_values(values, [3, 6], ["none", "moderate", "severe"], "m", "score")
    assert out.tolist() == [e for _, e in BIN_CASES]
    with pytest.raises(InputError, match="'high'"):
        bin_values(pd.Series([1, "high"]), [3], [0, 1], "m", "score")
    with pytest.raises(ConfigError, match="need 2 labels"):
        load_recipe("phantom-diagnosis", ["data.label_bins={score: {edges: [3], labels: [0]}}"])
    with pytest.raises(ConfigError, match="increase"):
        load_recipe("phantom-diagnosis", ["data.label_bins={score: {edges: [3, 2], labels: [0, 1, 2]}}"])


def test_label_bins_turn_a_fused_severity_score_into_icu_labels(phantom_manifest):
    extra = phantom_manifest.df.drop(columns=["went_icu"]).copy()
    extra[schema.PATIENT_ID] = "S-" + extra[schema.PATIENT_ID].astype(str)
    extra[schema.IMAGE] = extra[schema.IMAGE].astype(str) + "#sev"
    recipe = load_recipe("phantom-diagnosis", [
        "tasks=[{kind: binary, column: went_icu}]", "split.stratify=null",
        "data.label_bins={geographic_extent: {edges: [4], labels: [0, 1]}}",
        "data.rename={geographic_extent: went_icu}"])
    table, _ = _table(recipe, [phantom_manifest, Manifest(extra, None)])
    fused = table.df[table.df[schema.PATIENT_ID].str.startswith("S-")].set_index(schema.IMAGE)
    expected = (extra.set_index(schema.IMAGE)["geographic_extent"] >= 4).astype(float)
    assert (fused["went_icu"].astype(float) == expected.reindex(fused.index)).all() and expected.sum() > 0
    assert set(fused["split"]) == {"train"}
    primary = table.df[~table.df[schema.PATIENT_ID].str.startswith("S-")]
    # like label_map, the bins apply in every manifest holding the column (documented): the primary's too
    assert set(primary["geographic_extent"]) == {0, 1} and set(primary["went_icu"].astype(float)) <= {0.0, 1.0}


# --- a film listed twice is refused (it would train twice, or straddle train and test under two patient ids) ---

def test_duplicate_films_are_refused_within_and_across_manifests(phantom_manifest, tmp_path):
    recipe = load_recipe("phantom-diagnosis", ["split.stratify=null"])
    manifest = phantom_manifest
    assert len(_table(recipe, [manifest])[0].df) == len(manifest.df)  # the clean manifest passes
    twice = manifest.df.iloc[[0]].assign(patient_id="someone-else")  # the same film under another patient
    doubled = Manifest(pd.concat([manifest.df, twice], ignore_index=True), source=tmp_path / "doubled.csv")
    with pytest.raises(InputError, match="listed more than once") as err:
        _table(recipe, [doubled])
    assert manifest.df[schema.IMAGE].iloc[0] in str(err.value) and "doubled.csv" in str(err.value)
    fused = load_recipe("phantom-diagnosis", ["split.stratify=null", "data.extra=train_only"])
    with pytest.raises(InputError, match="listed more than once"):
        _table(fused, [manifest, Manifest(twice, source=tmp_path / "extra.csv")])
    # a primary copy without a label (dropped anyway) does not count: the film is labelled once, by the fused row
    unlabelled = manifest.df.copy()
    unlabelled.loc[0, "finding"] = None
    table, _ = _table(fused, [Manifest(unlabelled, source=tmp_path / "p.csv"), Manifest(twice, source=tmp_path / "e.csv")])
    assert (table.df[schema.IMAGE] == manifest.df[schema.IMAGE].iloc[0]).sum() == 1


def test_cli_refuses_a_duplicated_film_in_one_line(phantom_root, tmp_path):
    df = pd.read_csv(phantom_root / "manifest.csv", dtype=str)
    df = pd.concat([df, df.iloc[[3]]], ignore_index=True)
    df[schema.IMAGE] = [str(phantom_root / p) for p in df[schema.IMAGE]]
    for col in [c for c in df.columns if c.startswith("mask_")]:
        df[col] = [str(phantom_root / p) if isinstance(p, str) and p else p for p in df[col]]
    df.to_csv(tmp_path / "dup.csv", index=False)
    res = subprocess.run([str(CLI), "train", "phantom-diagnosis", "--data", str(tmp_path / "dup.csv"), "--out",
                          str(tmp_path / "run"), *sum((["--set", s] for s in FAST), [])],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "listed more than once" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
