"""Ordinal grades (e.g. per-lung opacity 0-3: none, mild, moderate, severe) as the opacity paper scores them.

- macro-averaged MAE: for each TRUE class present, the mean |pred - true| of its images; then the mean of
  those per-class values (so the rare severe grade weighs as much as the common grade 0);
- quadratic-weighted Cohen kappa and R^2 (grades treated as numbers);
- three binary collapses, each with precision / recall / F1 of the positive side and their support-weighted
  averages: none vs any (>= 1), none+mild vs moderate+severe (>= 2), not severe vs severe (>= 3).
"""

from __future__ import annotations

import numpy as np

from cxrlab.errors import InputError
from cxrlab.evaluate import _fast
from cxrlab.evaluate._checks import as_1d, same_length
from cxrlab.evaluate.bootstrap import DEFAULT_N_BOOT, bootstrap
from cxrlab.evaluate.multiclass import _scores, confusion_matrix

# name -> smallest grade on the positive side (for a 0..3 scale)
COLLAPSES = {"none_vs_any": 1, "mild_vs_moderate": 2, "severe": 3}


def _grades(name: str, y) -> np.ndarray:
    arr = as_1d(name, y)
    if not np.all(np.equal(np.mod(arr, 1), 0)) or arr.min() < 0:
        raise InputError("metrics", "ordinal grades must be non-negative integers", field=name)
    return arr.astype(int)


def macro_mae(y_true, y_pred) -> float:
    """Mean over the true classes present of each class's mean absolute error."""
    y, yp = as_1d("y_true", y_true), as_1d("y_pred", y_pred)
    same_length(y_true=y, y_pred=yp)
    return float(np.mean([np.abs(yp[y == c] - c).mean() for c in np.unique(y)]))


def quadratic_kappa(y_a, y_b, n_classes: int | None = None) -> float:
    """Quadratic-weighted Cohen kappa (symmetric in its arguments); NaN when both raters use one grade."""
    a, b = _grades("y_a", y_a), _grades("y_b", y_b)
    same_length(y_a=a, y_b=b)
    return _kappa(a, b, n_classes or int(max(a.max(), b.max())) + 1)


def _kappa(a: np.ndarray, b: np.ndarray, n_classes: int) -> float:
    if len(np.union1d(a, b)) < 2:
        return float("nan")
    return _fast.weighted_kappa(_fast.confusion(a, b, n_classes), power=2)


def r2(y_true, y_pred) -> float:
    """Coefficient of determination with ``y_true`` as reference; NaN when the truth is constant."""
    y, yp = as_1d("y_true", y_true), as_1d("y_pred", y_pred)
    same_length(y_true=y, y_pred=yp)
    return _r2(y, yp)


def _r2(y: np.ndarray, yp: np.ndarray) -> float:
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - yp) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")


def collapse_scores(y_true, y_pred, cut: int) -> dict[str, float]:
    """Binary P/R/F1 (positive = grade >= cut) and their support-weighted averages."""
    return _collapse(_grades("y_true", y_true), _grades("y_pred", y_pred), cut)


def _collapse(y: np.ndarray, yp: np.ndarray, cut: int) -> dict[str, float]:
    yb, pb = (y >= cut).astype(int), (yp >= cut).astype(int)
    p, r, f, s = _fast.prf_from_confusion(_fast.confusion(yb, pb, 2))
    w = s / s.sum()
    return {"precision": float(p[1]), "recall": float(r[1]), "f1": float(f[1]), "weighted_precision": float(w @ p),
            "weighted_recall": float(w @ r), "weighted_f1": float(w @ f), "n_positive": int(yb.sum())}


def ordinal_scores(y_true, y_pred, n_classes: int) -> dict[str, float]:
    y, yp = _grades("y_true", y_true), _grades("y_pred", y_pred)
    return _ordinal(y, yp, n_classes)


def _ordinal(y: np.ndarray, yp: np.ndarray, n_classes: int) -> dict[str, float]:
    err = np.abs(yp - y)
    per_class = np.bincount(y, weights=err, minlength=n_classes) / np.maximum(np.bincount(y, minlength=n_classes), 1)
    present = np.bincount(y, minlength=n_classes) > 0
    out = {"macro_mae": float(per_class[present].mean()), "mae": float(err.mean()),
           "kappa_quadratic": _kappa(y, yp, n_classes), "r2": _r2(y.astype(float), yp.astype(float))}
    out.update({k: v for k, v in _scores(y, yp, n_classes).items() if not k.startswith("support")})
    for name, cut in COLLAPSES.items():
        if cut < n_classes:
            for k, v in _collapse(y, yp, cut).items():
                if k != "n_positive":
                    out[f"{name}.{k}"] = v
    return out


def ordinal_metrics(
    y_true,
    y_pred,
    n_classes: int = 4,
    *,
    patient_ids=None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
) -> dict:
    """Ordinal metrics with patient-level bootstrap CIs, the confusion matrix and collapse supports."""
    y, yp = _grades("y_true", y_true), _grades("y_pred", y_pred)
    n = same_length(y_true=y, y_pred=yp)
    if max(y.max(), yp.max()) >= n_classes:
        raise InputError("metrics", f"grade above {n_classes - 1} for a {n_classes}-grade scale")
    est = bootstrap(lambda idx: _ordinal(y[idx], yp[idx], n_classes), n,
                    None if patient_ids is None else np.asarray(patient_ids), n_boot=n_boot, seed=seed)
    return {
        "n": n,
        "support": [int((y == k).sum()) for k in range(n_classes)],
        "collapse_support": {name: int((y >= cut).sum()) for name, cut in COLLAPSES.items() if cut < n_classes},
        "metrics": {k: e.as_dict() for k, e in est.items()},
        "confusion_matrix": confusion_matrix(y, yp, n_classes).tolist(),
    }
