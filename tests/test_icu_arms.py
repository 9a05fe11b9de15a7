"""The ICU study's arms and table (issue #17, cxrlab.icu): one set of folds for every arm, the fine-tuned arms'
split files equal the recipe's own ``split.folds`` rule, the head arm tests the same films, Youden cuts come from
validation (not test), paired comparisons refuse different films, and the Cohen-score fusion source."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrlab.data import schema
from cxrlab.errors import ConfigError
from cxrlab.icu.arms import ARMS, BASELINE, get_arm
from cxrlab.icu.cv import PROB, Y, head_cv
from cxrlab.icu.folds import make_folds, write_folds
from cxrlab.icu.fusion import severity_fusion
from cxrlab.icu.table import arm_summary, paired_vs, sens_spec_at_val_youden, youden_threshold
from cxrlab.recipes import load_recipe
from cxrlab.train.data import TRAIN_ONLY, assign_split


def _primary(n_patients: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = int(p % 3 != 0)
        for f in range(1 + p % 3):
            rows.append({schema.IMAGE: f"/x/p{p}_{f}.png", schema.PATIENT_ID: f"P{p:03d}", "went_icu": label,
                         "view": "AP" if rng.random() < 0.5 else "PA"})
    return pd.DataFrame(rows)


def test_folds_partition_patients_and_match_the_recipe_split_folds_rule():
    primary = _primary()
    folds = make_folds(primary, "went_icu", k=5, seed=0)
    assert len(folds) == 5
    tested = [set(f.loc[f["split"] == "test", schema.PATIENT_ID]) for f in folds]
    assert set().union(*tested) == set(primary[schema.PATIENT_ID]) and sum(map(len, tested)) == 30
    for f in folds:
        parts = f.groupby(schema.PATIENT_ID)["split"].nunique()
        assert (parts == 1).all() and set(f["split"]) == {"train", "val", "test"}
    # the same folds as `split.folds=5, split.fold=k` of covid-icu (what a run without --split would use)
    df = primary.assign(**{TRAIN_ONLY: False})
    for k, f in enumerate(folds):
        recipe = load_recipe("covid-icu", ["split.folds=5", f"split.fold={k}"])
        assert assign_split(df, recipe).tolist() == f["split"].tolist()
    # deterministic: every arm (and a rerun) reads identical folds
    again = make_folds(primary.sample(frac=1, random_state=3), "went_icu", k=5, seed=0)
    for a, b in zip(folds, again):
        key = [schema.IMAGE]
        assert a.sort_values(key).reset_index(drop=True).equals(b.sort_values(key).reset_index(drop=True))


def test_write_folds_round_trip(tmp_path):
    folds = make_folds(_primary(), "went_icu", k=5)
    paths = write_folds(folds, tmp_path / "folds")
    from cxrlab.data.splits import load_split

    for f, p in zip(folds, paths):
        assert load_split(p)[["image", "patient_id", "split"]].equals(f.reset_index(drop=True))


def test_head_arm_tests_the_fold_files_films_and_keeps_fused_rows_in_training():
    primary = _primary()
    folds = make_folds(primary, "went_icu", k=5)
    fused = pd.DataFrame({schema.IMAGE: [f"/f/{i}.png" for i in range(10)],
                          schema.PATIENT_ID: [f"F{i}" for i in range(10)], "went_icu": [0, 1] * 5, "train_only": 1})
    meta = pd.concat([primary.assign(train_only=0), fused], ignore_index=True)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(meta), 8)).astype(np.float32) + 3 * meta["went_icu"].to_numpy()[:, None]
    from cxrlab.train.embedding_head import HeadConfig

    pred = head_cv(vectors, meta, folds, "went_icu", HeadConfig(hidden=8, epochs=20, patience=5))
    assert not pred[schema.IMAGE].str.startswith("/f/").any()  # fused films are never validated or tested
    for k, f in enumerate(folds):
        got = pred[pred["fold"] == k]
        for part in ("val", "test"):
            assert sorted(got.loc[got["split"] == part, schema.IMAGE]) == sorted(f.loc[f["split"] == part, "image"])
    assert arm_summary(pred)["auc"]["value"] > 0.8  # separable vectors: the heads learned something


def test_youden_threshold_and_that_the_cut_comes_from_validation():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    assert 0.3 < youden_threshold(y, p) <= 0.6
    assert youden_threshold(np.ones(3), np.array([0.1, 0.2, 0.3])) == 0.5
    # val separates at 0.9; on test every score is below 0.9, so a val-chosen cut calls everything negative,
    # while a cut chosen on test would give sensitivity 1
    val = pd.DataFrame({"fold": 0, "split": "val", Y: [0, 0, 1, 1], PROB: [0.80, 0.85, 0.95, 0.97]})
    test = pd.DataFrame({"fold": 0, "split": "test", Y: [0, 0, 1, 1], PROB: [0.1, 0.2, 0.5, 0.6]})
    out = sens_spec_at_val_youden(pd.concat([val, test], ignore_index=True))
    assert out["thresholds"][0] > 0.85 and out["sensitivity"] == 0.0 and out["specificity"] == 1.0


def _pred(images, y, p, part="test"):
    return pd.DataFrame({schema.IMAGE: images, schema.PATIENT_ID: [i.split("_")[0] for i in images], "fold": 0,
                         "split": part, Y: y, PROB: p})


def test_paired_comparison_needs_the_same_films_and_counts_patients():
    images = [f"P{i}_0" for i in range(20)]
    y = np.array([0, 1] * 10)
    rng = np.random.default_rng(1)
    base = pd.concat([_pred(images, y, rng.random(20)), _pred(images[:4], y[:4], rng.random(4), "val")])
    good = pd.concat([_pred(images, y, y * 0.5 + rng.random(20) * 0.4), _pred(images[:4], y[:4], y[:4], "val")])
    out = paired_vs(base, good, n_boot=200)
    assert out["n_patients"] == 20 and out["difference"]["value"] > 0 and "delong" in out
    with pytest.raises(ValueError, match="same films"):
        paired_vs(base, _pred(images[:10], y[:10], rng.random(10)), n_boot=50)
    summary = arm_summary(good, views=pd.Series(["AP", "PA"] * 10, index=images), n_boot=100)
    assert summary["images"] == summary["patients"] == 20 and summary["positives"] == 10
    assert set(summary["confound"]["within_view"]) == {"ap_supine", "pa"}


def test_severity_fusion_labels_only_patients_without_an_icu_label():
    df = pd.DataFrame({schema.PATIENT_ID: ["A", "A", "B", "C", "D"], schema.IMAGE: list("12345"),
                       "went_icu": [1, None, None, None, None], "geographic_extent": [6, 7, 5, 4.7, None]})
    out = severity_fusion(df, threshold=5)
    assert out[schema.PATIENT_ID].tolist() == ["B", "C"]  # A has an ICU label (even on its other film); D no score
    assert out["went_icu"].tolist() == [1, 0] and (out["train_only"] == 1).all()


def test_arms_registry():
    assert get_arm(BASELINE).backbone == "imagenet" and not get_arm(BASELINE).fusion
    assert {a.kind for a in ARMS} == {"finetune", "head"}
    assert get_arm("c_xray").weights(None) is None and get_arm("c_xray").weights("run:x") == "run:x"
    with pytest.raises(ConfigError, match="unknown ICU arm"):
        get_arm("nope")


def test_gallery_png_one_row_per_arm_same_films(tmp_path):
    from PIL import Image

    from cxrlab.icu.gallery import gallery_png

    frames = {}
    for arm in ("a", "b"):
        rows = []
        for i in range(3):
            path = tmp_path / f"{arm}{i}.png"
            Image.new("RGB", (16, 16), (i * 80, 0, 0)).save(path)
            rows.append({schema.IMAGE: f"img{i}", "fold": 0, "hcs": 0.1 * i, "overlay": str(path)})
        frames[arm] = pd.DataFrame(rows)
    out = gallery_png(frames, ["img0", "img2"], {"a": "A", "b": "B"}, tmp_path / "g" / "gallery.png")
    assert out.is_file() and not list(out.parent.glob("*.tmp.png"))
    w, h = Image.open(out).size
    assert w > 0 and h > 0


def test_explain_arm_explains_only_the_sample_of_each_folds_test_films(tmp_path, monkeypatch):
    import json

    from cxrlab.explain import run as explain_run
    from cxrlab.icu.gallery import explain_arm

    folds = make_folds(_primary(), "went_icu", k=5)
    paths = write_folds(folds, tmp_path / "folds")
    calls = {}

    def fake(run_dir, images, out, data=None):  # the real explainer needs a trained run; record what it is asked
        calls[Path(run_dir).name] = list(images)
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "explain.json").write_text(json.dumps(
            {"images": [{"image": i, "hcs": 0.5, "overlay": "x.png"} for i in images]}))

    from pathlib import Path

    monkeypatch.setattr(explain_run, "explain_images", fake)
    sample = [f.loc[f["split"] == "test", "image"].iloc[0] for f in folds]
    out = explain_arm(tmp_path / "arm", paths, "m.csv", tmp_path / "exp", sample)
    for k, f in enumerate(folds):  # fold k's model explains only its own test films
        assert set(calls[f"fold{k}"]) <= set(f.loc[f["split"] == "test", "image"]) and len(calls[f"fold{k}"]) == 1
    assert len(out) == 5 and out["hcs"].eq(0.5).all()
