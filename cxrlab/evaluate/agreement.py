"""Reader agreement: every pair among the readers and the model, MAE, quadratic kappa, macro-F1 and R^2,
so one can see whether the model disagrees with readers less than readers disagree with each other.

Orientation: in a model-reader pair the READER is the reference (R^2 and MAE of the model against the reader);
in a reader-reader pair the first-named reader is the reference. MAE, kappa and macro-F1 are symmetric.

Ratings are grades (class indices). A fractional rating (a probability, a mean score) is refused rather than
truncated: casting probabilities to int makes every binary prediction 0. Binary model outputs are thresholded
by the caller (``cxrlab.evaluate.evaluation.reader_agreement``) at a stated operating point.
"""

from __future__ import annotations

import itertools
from typing import Mapping

import numpy as np

from cxrlab.errors import InputError
from cxrlab.evaluate.bootstrap import DEFAULT_N_BOOT, bootstrap
from cxrlab.evaluate.multiclass import _scores
from cxrlab.evaluate.ordinal import _kappa, _r2


def pair_scores(reference: np.ndarray, other: np.ndarray, n_classes: int) -> dict[str, float]:
    """MAE, quadratic kappa, macro-F1 (classes seen by either), R^2 of ``other`` against ``reference``."""
    return {
        "mae": float(np.abs(other - reference).mean()),
        "kappa_quadratic": _kappa(reference, other, n_classes),
        "macro_f1": _scores(reference, other, n_classes)["macro_f1"],
        "r2": _r2(reference.astype(float), other.astype(float)),
    }


def _grades(name: str, values) -> np.ndarray:
    """A rater's grades as floats (NaN = not rated); non-integer ratings are an error naming the rater."""
    v = np.asarray(values, dtype=float)
    fractional = np.isfinite(v) & (v != np.round(v))
    if fractional.any():
        raise InputError("agreement", f"rater {name!r} gives non-integer ratings (e.g. {v[fractional][0]:g}); "
                         "agreement compares grades: threshold probabilities or round scores first", field=name)
    return v


def agreement_table(
    raters: Mapping[str, np.ndarray],
    *,
    model: str | None = None,
    n_classes: int = 4,
    patient_ids=None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
) -> dict:
    """Pairwise agreement of ``raters`` (name -> grades; NaN = not rated) with patient-bootstrap CIs.

    ``model`` names the entry that is the model (compared against each reader). Returns ``{"rows": [...],
    "summary": {...}}``; the summary gives the mean of each metric over model-reader and reader-reader pairs.
    """
    if len(raters) < 2:
        raise InputError("agreement", "need at least two raters (e.g. two readers, or a reader and the model)")
    if model is not None and model not in raters:
        raise InputError("agreement", f"model {model!r} is not among the raters {list(raters)}")
    arrays = {k: _grades(k, v) for k, v in raters.items()}
    n = {len(v) for v in arrays.values()}
    if len(n) != 1:
        raise InputError("agreement", f"raters have different lengths: { {k: len(v) for k, v in arrays.items()} }")
    groups = None if patient_ids is None else np.asarray(patient_ids)
    readers = [k for k in arrays if k != model]
    pairs = [(r, model) for r in readers] if model is not None else []
    pairs += list(itertools.combinations(readers, 2))
    rows = []
    for ref_name, other_name in pairs:
        ok = np.isfinite(arrays[ref_name]) & np.isfinite(arrays[other_name])
        ref, other = arrays[ref_name][ok].astype(int), arrays[other_name][ok].astype(int)
        if ok.sum() == 0:
            continue
        est = bootstrap(lambda idx: pair_scores(ref[idx], other[idx], n_classes), int(ok.sum()),
                        None if groups is None else groups[ok], n_boot=n_boot, seed=seed)
        rows.append({"reference": ref_name, "other": other_name,
                     "kind": "model-reader" if other_name == model else "reader-reader",
                     "n": int(ok.sum()), **{k: e.as_dict() for k, e in est.items()}})
    summary = {}
    for kind in ("model-reader", "reader-reader"):
        sel = [r for r in rows if r["kind"] == kind]
        if sel:
            summary[kind] = {m: float(np.nanmean([r[m]["value"] for r in sel]))
                             for m in ("mae", "kappa_quadratic", "macro_f1", "r2")}
    return {"rows": rows, "summary": summary}


def fit_monotone_cutpoints(reference, score, n_classes: int) -> np.ndarray:
    """Cut-points ``c`` (``n_classes - 1``, non-decreasing, ±inf where a grade is never given) of the step map
    ``grade(s) = number of cut-points <= s`` that puts ``score`` on ``reference``'s 0..n_classes-1 scale with the
    smallest total absolute error. ``score`` is any ordered rating: another rater's grades, or a model's
    expected grade. Exact, by dynamic programming over the distinct score values.

    What it answers: how much of a disagreement is a difference of *scale* (which a monotone relabelling
    removes) and how much of *ordering* (which it cannot)."""
    ref, sc = np.asarray(reference, dtype=float), np.asarray(score, dtype=float)
    if ref.shape != sc.shape or ref.size == 0:
        raise InputError("agreement", "relabelling needs two equally long, non-empty rating vectors")
    levels, which = np.unique(sc, return_inverse=True)
    grades = np.arange(n_classes)
    # cost[i, v]: total absolute error if the score level i becomes grade v
    cost = np.zeros((len(levels), n_classes))
    np.add.at(cost, which, np.abs(grades[None, :] - ref[:, None]))
    best = np.zeros_like(cost)  # best[i, v]: least cost of levels 0..i with level i -> v
    best[0] = cost[0]
    for i in range(1, len(levels)):
        best[i] = cost[i] + np.minimum.accumulate(best[i - 1])
    assigned = np.zeros(len(levels), dtype=int)
    assigned[-1] = int(np.argmin(best[-1]))
    for i in range(len(levels) - 2, -1, -1):  # walk back: the best grade of level i not above level i + 1's
        assigned[i] = int(np.argmin(best[i][:assigned[i + 1] + 1]))
    cuts = np.full(n_classes - 1, np.inf)
    for g in range(1, n_classes):
        at = np.flatnonzero(assigned >= g)
        if len(at):  # halfway between the last level below grade g and the first at or above it
            cuts[g - 1] = levels[0] - 1.0 if at[0] == 0 else (levels[at[0] - 1] + levels[at[0]]) / 2
    return cuts


def apply_cutpoints(score, cuts: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.asarray(cuts), np.asarray(score, dtype=float), side="right")


def relabelled_mae(reference, score, n_classes: int, patient_ids, *, folds: int = 5, n_boot: int = DEFAULT_N_BOOT,
                   seed: int = 0) -> dict:
    """MAE of ``score`` (grades or any ordered rating) against ``reference`` after the best monotone map onto
    ``reference``'s grades (:func:`fit_monotone_cutpoints`), two ways:

    - ``in_sample``: the map fitted on all rows and scored on them; an optimistic bound (no monotone map of
      ``score`` does better on these rows);
    - ``cross_fitted``: the map fitted on the other patient folds, scored on each held-out fold (what a
      calibration on some of a hospital's patients would give on the rest), with a patient-bootstrap CI.

    NaN ratings are left out. Returns both, the in-sample cut-points and the row count."""
    from sklearn.model_selection import GroupKFold

    ref, sc = np.asarray(reference, dtype=float), np.asarray(score, dtype=float)
    pid = np.asarray(patient_ids)
    ok = np.isfinite(ref) & np.isfinite(sc)
    ref, sc, pid = ref[ok], sc[ok], pid[ok]
    n_groups = len(np.unique(pid))
    if n_groups < 2:
        raise InputError("agreement", "cross-fitting a relabelling needs ratings of at least two patients")
    cuts = fit_monotone_cutpoints(ref, sc, n_classes)
    cross = np.empty(len(ref), dtype=int)
    for fit, held in GroupKFold(n_splits=min(folds, n_groups)).split(sc, groups=pid):
        cross[held] = apply_cutpoints(sc[held], fit_monotone_cutpoints(ref[fit], sc[fit], n_classes))
    est = bootstrap(lambda idx: {"mae": float(np.abs(cross[idx] - ref[idx]).mean())}, len(ref), pid,
                    n_boot=n_boot, seed=seed)["mae"]
    return {"n": int(len(ref)), "cutpoints": cuts.tolist(),
            "in_sample": float(np.abs(apply_cutpoints(sc, cuts) - ref).mean()), "cross_fitted": est.as_dict()}
