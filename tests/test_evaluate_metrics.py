"""Metric suite: tables of hand-computed cases, cross-checked against scikit-learn/scipy where they exist."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    brier_score_loss,
    cohen_kappa_score,
    f1_score,
    precision_recall_fscore_support,
    r2_score,
    roc_auc_score,
)

from cxrlab.errors import InputError
from cxrlab.evaluate import (
    agreement_table,
    bin_column,
    binary_metrics,
    bland_altman,
    bootstrap,
    brier,
    calibration,
    classification_scores,
    collapse_scores,
    confusion_matrix,
    expected_calibration_error,
    macro_mae,
    multiclass_metrics,
    ordinal_metrics,
    quadratic_kappa,
    regression_scores,
    reliability_curve,
    roc_auc,
    subgroup_table,
    threshold_metrics,
    youden_threshold,
)

# --- binary -----------------------------------------------------------------------------------------------
Y4, P4 = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
BINARY_CASES = [
    # (function, args, expected)
    (roc_auc, (Y4, P4), 0.75),
    (roc_auc, ([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]), 1.0),
    (roc_auc, ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]), 0.5),
    (brier, (Y4, P4), (0.1**2 + 0.4**2 + 0.65**2 + 0.2**2) / 4),
    (youden_threshold, (Y4, P4), 0.8),  # J = 0.5 at 0.8 and at 0.35: the higher threshold wins
    (youden_threshold, ([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]), 0.3),
]


@pytest.mark.parametrize("fn,args,expected", BINARY_CASES)
def test_binary_hand_values(fn, args, expected):
    assert fn(*args) == pytest.approx(expected)


THRESHOLD_CASES = [
    # threshold, expected sens, spec, ppv, npv, acc, f1 for Y4/P4
    (0.5, dict(tp=1, fp=0, tn=2, fn=1, sensitivity=0.5, specificity=1.0, ppv=1.0, npv=2 / 3, accuracy=0.75,
               f1=2 / 3)),
    (0.35, dict(tp=2, fp=1, tn=1, fn=0, sensitivity=1.0, specificity=0.5, ppv=2 / 3, npv=1.0, accuracy=0.75,
                f1=0.8)),
]


@pytest.mark.parametrize("threshold,expected", THRESHOLD_CASES)
def test_threshold_metrics(threshold, expected):
    got = threshold_metrics(Y4, P4, threshold)
    for k, v in expected.items():
        assert got[k] == pytest.approx(v), k


def test_threshold_metrics_undefined_is_nan_not_zero():
    got = threshold_metrics([0, 0, 1], [0.1, 0.2, 0.3], 0.9)  # nothing called positive
    assert math.isnan(got["ppv"]) and got["sensitivity"] == 0.0


def test_roc_auc_single_class_is_nan():
    assert math.isnan(roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))


def test_binary_matches_sklearn_on_random_data():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1)
    res = binary_metrics(y, p, patient_ids=np.arange(300) // 3, fixed_threshold=0.5, n_boot=200)
    m = res["metrics"]
    assert m["auc"]["value"] == pytest.approx(roc_auc_score(y, p))
    assert m["brier"]["value"] == pytest.approx(brier_score_loss(y, p))
    assert m["auc"]["low"] < m["auc"]["value"] < m["auc"]["high"]
    assert res["fixed"]["sensitivity"] == pytest.approx(((p >= 0.5) & (y == 1)).sum() / y.sum())
    assert res["n_patients"] == 100


@pytest.mark.parametrize("bad", [dict(y=[0, 2], p=[0.1, 0.2]), dict(y=[0, 1], p=[0.1, 1.2]),
                                 dict(y=[0, 1], p=[0.1]), dict(y=[0, 1], p=[0.1, float("nan")])])
def test_binary_bad_input_names_reason(bad):
    with pytest.raises(InputError):
        binary_metrics(bad["y"], bad["p"], n_boot=0)


# --- bootstrap --------------------------------------------------------------------------------------------
def test_bootstrap_resamples_patients_not_images():
    groups = np.repeat(np.arange(10), 3)
    seen = []

    def stat(idx):
        seen.append(idx)
        return {"n": float(len(idx))}

    bootstrap(stat, 30, groups, n_boot=50, seed=0)
    for idx in seen[1:]:
        counts = np.bincount(idx, minlength=30).reshape(10, 3)
        assert (counts == counts[:, :1]).all()  # the 3 images of a patient always travel together


def test_patient_bootstrap_ci_not_shrunk_by_duplicated_images():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(30), np.ones(30)].astype(int)
    p = np.clip(0.35 * y + rng.random(60) * 0.65, 0, 1)
    pid = np.arange(60)
    once = binary_metrics(y, p, pid, n_boot=300, seed=3)["metrics"]["auc"]
    # every patient now has 4 identical images: a patient-level CI must not change
    rep = binary_metrics(np.repeat(y, 4), np.repeat(p, 4), np.repeat(pid, 4), n_boot=300, seed=3)["metrics"]["auc"]
    assert rep["low"] == pytest.approx(once["low"]) and rep["high"] == pytest.approx(once["high"])
    # while an image-level bootstrap would be ~2x narrower
    img = binary_metrics(np.repeat(y, 4), np.repeat(p, 4), np.arange(240), n_boot=300, seed=3)["metrics"]["auc"]
    assert (img["high"] - img["low"]) < 0.7 * (once["high"] - once["low"])


# --- multiclass -------------------------------------------------------------------------------------------
YM, PM = [0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2]
MULTICLASS_CASES = [
    ("accuracy", 4 / 6), ("precision[0]", 1.0), ("precision[1]", 0.5), ("precision[2]", 0.5),
    ("recall[0]", 2 / 3), ("recall[1]", 0.5), ("recall[2]", 1.0), ("f1[0]", 0.8), ("f1[1]", 0.5),
    ("f1[2]", 2 / 3), ("macro_f1", (0.8 + 0.5 + 2 / 3) / 3), ("weighted_f1", (3 * 0.8 + 2 * 0.5 + 2 / 3) / 6),
    ("weighted_precision", 0.75), ("weighted_recall", 4 / 6),
]


@pytest.mark.parametrize("key,expected", MULTICLASS_CASES)
def test_multiclass_hand_values(key, expected):
    assert classification_scores(YM, PM, 3)[key] == pytest.approx(expected)


def test_confusion_matrix_rows_true_columns_pred():
    assert confusion_matrix(YM, PM, 3).tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_multiclass_matches_sklearn_on_random_data():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 200)
    probs = rng.dirichlet(np.ones(4), 200)
    probs[np.arange(200), y] += 0.5
    probs /= probs.sum(1, keepdims=True)
    res = multiclass_metrics(y, probs=probs, classes=["a", "b", "c", "d"], patient_ids=np.arange(200), n_boot=100)
    m = res["metrics"]
    yp = probs.argmax(1)
    assert m["macro_f1"]["value"] == pytest.approx(f1_score(y, yp, average="macro"))
    assert m["weighted_f1"]["value"] == pytest.approx(f1_score(y, yp, average="weighted"))
    assert m["auc[2]"]["value"] == pytest.approx(roc_auc_score(y == 2, probs[:, 2]))
    assert m["macro_auc"]["value"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert res["support"] == np.bincount(y, minlength=4).tolist()


def test_multiclass_rejects_out_of_range_class():
    with pytest.raises(InputError, match="0..2"):
        classification_scores([0, 1, 3], [0, 1, 2], 3)


# --- ordinal ----------------------------------------------------------------------------------------------
YO, PO = [0, 0, 0, 0, 1, 2, 3], [0, 0, 0, 1, 2, 2, 1]
ORDINAL_CASES = [
    (macro_mae, (YO, PO), (0.25 + 1 + 0 + 2) / 4),  # per-class MAE 0.25, 1, 0, 2
    (macro_mae, ([1, 1, 1, 3], [1, 1, 1, 0]), (0 + 3) / 2),  # rare class weighs as much as the common one
    (quadratic_kappa, ([0, 1, 2], [0, 2, 2]), 0.8),  # 1 - (1/12) / (5/12)
    (quadratic_kappa, ([0, 1], [1, 0]), -1.0),
    (quadratic_kappa, ([0, 1, 2, 3], [0, 1, 2, 3]), 1.0),
]


@pytest.mark.parametrize("fn,args,expected", ORDINAL_CASES)
def test_ordinal_hand_values(fn, args, expected):
    assert fn(*args) == pytest.approx(expected)


COLLAPSE_CASES = [  # cut, precision, recall, f1 of YO/PO
    (1, 0.75, 1.0, 6 / 7),
    (2, 0.5, 0.5, 0.5),
    (3, 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize("cut,p,r,f", COLLAPSE_CASES)
def test_binary_collapses(cut, p, r, f):
    got = collapse_scores(YO, PO, cut)
    assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f))
    yb, pb = np.asarray(YO) >= cut, np.asarray(PO) >= cut
    wp, wr, wf, _ = precision_recall_fscore_support(yb, pb, average="weighted", zero_division=0)
    assert (got["weighted_precision"], got["weighted_f1"]) == pytest.approx((wp, wf))


def test_ordinal_metrics_against_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 150)
    yp = np.clip(y + rng.integers(-1, 2, 150), 0, 3)
    m = ordinal_metrics(y, yp, 4, patient_ids=np.arange(150) // 2, n_boot=100)["metrics"]
    assert m["kappa_quadratic"]["value"] == pytest.approx(cohen_kappa_score(y, yp, weights="quadratic"))
    assert m["r2"]["value"] == pytest.approx(r2_score(y, yp))
    expected = np.mean([np.abs(yp[y == c] - c).mean() for c in range(4)])
    assert m["macro_mae"]["value"] == pytest.approx(expected)
    assert {"none_vs_any.f1", "mild_vs_moderate.f1", "severe.f1"} <= set(m)


# --- regression -------------------------------------------------------------------------------------------
YR, PR = [1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 4.0, 5.0]
REGRESSION_CASES = [
    ("mae", 0.75), ("rmse", math.sqrt(0.75)), ("r2", 0.4), ("pearson", 5.5 / math.sqrt(5 * 6.75)),
    ("spearman", 4.5 / math.sqrt(5 * 4.5)), ("bland_altman.bias", 0.75), ("bland_altman.sd", 0.5),
    ("bland_altman.loa_low", 0.75 - 0.98), ("bland_altman.loa_high", 0.75 + 0.98),
]


@pytest.mark.parametrize("key,expected", REGRESSION_CASES)
def test_regression_hand_values(key, expected):
    assert regression_scores(YR, PR)[key] == pytest.approx(expected)


def test_regression_against_scipy():
    rng = np.random.default_rng(4)
    y = rng.random(80) * 8
    yp = y + rng.normal(0, 1, 80)
    got = regression_scores(y, yp)
    assert got["pearson"] == pytest.approx(stats.pearsonr(y, yp)[0])
    assert got["spearman"] == pytest.approx(stats.spearmanr(y, yp)[0])
    assert got["r2"] == pytest.approx(r2_score(y, yp))
    assert bland_altman(y, yp)["bias"] == pytest.approx((yp - y).mean())


# --- calibration ------------------------------------------------------------------------------------------
CALIBRATION_CASES = [
    # outcome, confidence, n_bins, ECE
    ([0, 0, 1, 1], [0.05, 0.15, 0.18, 0.95], 10, (0.05 + 2 * abs(0.5 - 0.165) + 0.05) / 4),
    ([1, 1, 1, 1], [1.0, 1.0, 1.0, 1.0], 10, 0.0),
    ([0, 1], [0.5, 0.5], 2, 0.0),
]


@pytest.mark.parametrize("y,c,bins,expected", CALIBRATION_CASES)
def test_ece_hand_values(y, c, bins, expected):
    assert expected_calibration_error(y, c, bins) == pytest.approx(expected)


def test_reliability_curve_matches_sklearn():
    rng = np.random.default_rng(5)
    p = rng.random(500)
    y = (rng.random(500) < p).astype(int)
    curve = reliability_curve(y, p, 10)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(curve["observed"], prob_true)
    np.testing.assert_allclose(curve["confidence"], prob_pred)
    assert calibration(y, p)["ece"] < 0.1  # outcomes drawn from p: well calibrated


# --- subgroups --------------------------------------------------------------------------------------------
def _subgroup_frame():
    rng = np.random.default_rng(6)
    n = 240
    df = pd.DataFrame({"patient_id": [f"p{i // 2}" for i in range(n)],
                       "sex": np.where(np.arange(n) < 200, "M", "F"),
                       "age": np.r_[rng.integers(20, 90, n - 4), [np.nan] * 4]})
    df["y"] = rng.integers(0, 2, n)
    df["p"] = np.clip(0.3 * df["y"] + 0.7 * rng.random(n), 0, 1)
    return df


def _auc(sub):
    return binary_metrics(sub["y"], sub["p"], sub["patient_id"], n_boot=50)


def test_subgroup_counts_and_small_warning():
    rows = subgroup_table(_subgroup_frame(), "sex", _auc, keys=["auc"])
    by = {r["level"]: r for r in rows}
    assert by["M"]["n_images"] == 200 and by["M"]["n_patients"] == 100 and by["M"]["warning"] == ""
    assert by["F"]["n_patients"] == 20 and by["F"]["warning"] == ""
    rows = subgroup_table(_subgroup_frame(), "sex", _auc, keys=["auc"], min_patients=25)
    assert "too small" in {r["level"]: r for r in rows}["F"]["warning"]
    assert "low" in by["M"]["auc"] and by["M"]["auc"]["low"] <= by["M"]["auc"]["value"]


def test_subgroup_binned_column_and_missing():
    df = _subgroup_frame()
    rows = subgroup_table(df, "age", _auc, bins=[0, 40, 60, 200], keys=["auc"])
    levels = {r["level"]: r["n_images"] for r in rows}
    assert set(levels) == {"0-40", "40-60", "60-200", "missing"}
    assert sum(levels.values()) == len(df) and levels["missing"] == 4
    assert bin_column(pd.Series([39.9, 40, 60]), [0, 40, 60, 200]).tolist() == ["0-40", "40-60", "60-200"]


def test_subgroup_unknown_column():
    with pytest.raises(InputError, match="race"):
        subgroup_table(_subgroup_frame(), "race", _auc)


# --- reader agreement -------------------------------------------------------------------------------------
def test_agreement_table_hand_values():
    a = np.array([0, 1, 2, 3, 0, 1])
    b = np.array([0, 1, 2, 2, 1, 1])
    model = np.array([0, 1, 2, 3, 0, 2])
    res = agreement_table({"senior": a, "junior": b, "model": model}, model="model", n_boot=0)
    rows = {(r["reference"], r["other"]): r for r in res["rows"]}
    assert set(rows) == {("senior", "model"), ("junior", "model"), ("senior", "junior")}
    sj = rows[("senior", "junior")]
    assert sj["kind"] == "reader-reader" and sj["mae"]["value"] == pytest.approx(2 / 6)
    assert sj["kappa_quadratic"]["value"] == pytest.approx(cohen_kappa_score(a, b, weights="quadratic"))
    assert sj["macro_f1"]["value"] == pytest.approx(f1_score(a, b, average="macro"))
    assert sj["r2"]["value"] == pytest.approx(r2_score(a, b))
    sm = rows[("senior", "model")]
    assert sm["kind"] == "model-reader" and sm["mae"]["value"] == pytest.approx(1 / 6)
    assert res["summary"]["model-reader"]["mae"] == pytest.approx((1 / 6 + 3 / 6) / 2)


def test_agreement_skips_unrated_rows_pairwise():
    a = np.array([0, 1, np.nan, 3])
    b = np.array([0, 1, 2, 2])
    res = agreement_table({"a": a, "b": b}, n_boot=0)
    assert res["rows"][0]["n"] == 3 and res["rows"][0]["mae"]["value"] == pytest.approx(1 / 3)


def test_agreement_refuses_fractional_ratings():
    """Casting a probability to int made every binary prediction 0; a fractional rating is now an error."""
    with pytest.raises(InputError, match="model.*non-integer.*threshold"):
        agreement_table({"r1": [0, 1, 1], "model": [0.2, 0.9, 0.7]}, model="model", n_boot=0)




def test_monotone_cutpoints_remove_scale_not_ordering():
    from cxrlab.evaluate.agreement import apply_cutpoints, fit_monotone_cutpoints

    reader = np.array([1, 1, 2, 2, 3, 3, 0])
    shifted = np.clip(reader - 1, 0, 3)  # the same ordering one grade lower; 0 now hides 0 and 1
    cuts = fit_monotone_cutpoints(reader, shifted, 4)
    assert np.all(cuts[1:] >= cuts[:-1])
    assert np.abs(apply_cutpoints(shifted, cuts) - reader).mean() == pytest.approx(1 / 7)
    score = reader * 0.1 + 5.0  # another scale, same ordering: removed entirely
    assert np.array_equal(apply_cutpoints(score, fit_monotone_cutpoints(reader, score, 4)), reader)
    reversed_order = 3 - reader
    cuts = fit_monotone_cutpoints(reader, reversed_order, 4)
    assert np.abs(apply_cutpoints(reversed_order, cuts) - reader).mean() > 0.8  # ordering cannot be relabelled


def test_monotone_cutpoints_match_exhaustive_search():
    import itertools

    from cxrlab.evaluate.agreement import apply_cutpoints, fit_monotone_cutpoints

    rng = np.random.default_rng(3)
    for _ in range(60):
        ref, other = rng.integers(0, 4, 25), rng.integers(0, 4, 25)
        best = min(np.abs(np.array(m)[other] - ref).sum() for m in itertools.combinations_with_replacement(range(4), 4))
        assert np.abs(apply_cutpoints(other, fit_monotone_cutpoints(ref, other, 4)) - ref).sum() == best
        ref, score = rng.integers(0, 4, 7), rng.normal(size=7)  # a continuous rating: every level its own step
        levels, which = np.unique(score, return_inverse=True)
        best = min(np.abs(np.array(m)[which] - ref).sum()
                   for m in itertools.combinations_with_replacement(range(4), len(levels)))
        assert np.abs(apply_cutpoints(score, fit_monotone_cutpoints(ref, score, 4)) - ref).sum() == best

def test_relabelled_mae_bound_and_cross_fit():
    from cxrlab.evaluate.agreement import relabelled_mae

    rng = np.random.default_rng(0)
    reader = rng.integers(0, 4, 120).astype(float)
    model = np.clip(reader + 1, 0, 3)  # a constant offset: a relabelling removes it
    model[::10] = np.nan  # unrated lungs are left out
    pid = np.repeat(np.arange(60), 2)
    r = relabelled_mae(reader, model, 4, pid, n_boot=50)
    assert r["n"] == 108
    ok = np.isfinite(model)
    assert r["in_sample"] < np.abs(model[ok] - reader[ok]).mean()
    assert r["in_sample"] <= r["cross_fitted"]["value"] + 1e-9
    assert r["cross_fitted"]["low"] <= r["cross_fitted"]["value"] <= r["cross_fitted"]["high"]
    with pytest.raises(InputError, match="two patients"):
        relabelled_mae(reader[:4], model[:4], 4, np.zeros(4))

BINARY_READER = np.array([1, 1, 1, 1, 0, 0, 0, 0])
BINARY_READER_2 = np.array([1, 1, 0, 0, 0, 0, 0, 1])
BINARY_PROB = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.3, 0.6, 0.05])


def _binary_agreement(thresholds=None) -> tuple[dict, dict]:
    from cxrlab.evaluate.evaluation import reader_agreement
    from cxrlab.evaluate.run import Target

    images = [f"/x/img{k}.png" for k in range(8)]
    df = pd.DataFrame({"image": images, "patient_id": [f"p{k}" for k in range(8)], "went_icu": BINARY_READER,
                       "prob_went_icu": BINARY_PROB})
    readers = pd.DataFrame({"image": images, "went_icu@r1": BINARY_READER, "went_icu@r2": BINARY_READER_2})
    target = Target("went_icu", "binary", "went_icu", ["0", "1"], ["prob_went_icu"], task="went_icu")
    res = reader_agreement([target], df, readers, n_boot=0, seed=0, thresholds=thresholds)
    return res, {(r["reference"], r["other"]): r for r in res["rows"]}


@pytest.mark.parametrize("thresholds, model, accuracy, kappa", [
    # p >= 0.5 -> 1 1 1 0 0 0 1 0: 6/8 agree with r1; p_o 0.75, p_e 0.5 -> kappa 0.5
    (None, [1, 1, 1, 0, 0, 0, 1, 0], 0.75, 0.5),
    # the report's validation operating point 0.65 -> 1 1 1 0 0 0 0 0: 7/8; p_e = 4/8·3/8 + 4/8·5/8 = 0.5 -> 0.75
    ({"went_icu": 0.65}, [1, 1, 1, 0, 0, 0, 0, 0], 0.875, 0.75),
])
def test_binary_reader_agreement_thresholds_model_probabilities(thresholds, model, accuracy, kappa):
    res, rows = _binary_agreement(thresholds)
    vs_r1 = rows[("r1", "model")]
    assert vs_r1["kind"] == "model-reader" and vs_r1["n"] == 8
    assert 1 - vs_r1["mae"]["value"] == pytest.approx(accuracy)  # on 0/1 grades MAE = 1 - accuracy
    assert vs_r1["kappa_quadratic"]["value"] == pytest.approx(kappa)
    assert kappa == pytest.approx(cohen_kappa_score(BINARY_READER, model))  # two classes: quadratic = Cohen's
    assert res["thresholds"] == {"went_icu": 0.5 if thresholds is None else 0.65}
    readers = rows[("r1", "r2")]  # 5/8 agree, p_e 0.5 -> kappa 0.25; the threshold does not touch readers
    assert readers["mae"]["value"] == pytest.approx(3 / 8)
    assert readers["kappa_quadratic"]["value"] == pytest.approx(0.25)


def test_agreement_needs_two_raters():
    with pytest.raises(InputError, match="two raters"):
        agreement_table({"a": [0, 1]})


# --- the vectorised cores against scikit-learn, with ties --------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_cores_match_sklearn_with_ties(seed):
    from sklearn.metrics import average_precision_score, roc_curve

    from cxrlab.evaluate.binary import average_precision

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 120)
    p = np.round(np.clip(0.2 * y + rng.random(120) * 0.8, 0, 1), 1)  # many ties
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p))
    assert average_precision(y, p) == pytest.approx(average_precision_score(y, p))
    fpr, tpr, thr = roc_curve(y, p)
    j = tpr - fpr
    assert youden_threshold(y, p) == pytest.approx(thr[int(np.argmax(j))])
    a, b = rng.integers(0, 4, 120), rng.integers(0, 4, 120)
    assert quadratic_kappa(a, b, 4) == pytest.approx(cohen_kappa_score(a, b, weights="quadratic"))
    assert classification_scores(a, b, 4)["macro_f1"] == pytest.approx(f1_score(a, b, average="macro"))


def test_per_class_scores_undefined_are_nan():
    got = classification_scores([0, 0, 1], [0, 0, 0], 3)
    assert math.isnan(got["precision[1]"]) and got["recall[1]"] == 0.0  # class 1 never predicted
    assert math.isnan(got["recall[2]"]) and math.isnan(got["f1[2]"])  # class 2 absent everywhere
    assert got["macro_f1"] == pytest.approx(f1_score([0, 0, 1], [0, 0, 0], average="macro", zero_division=0))
