"""Binary classification metrics: ROC-AUC with a patient-level bootstrap CI, operating points, PPV/NPV, Brier.

Operating points:
- ``youden``: threshold maximising sensitivity + specificity - 1 on the evaluated data itself (optimistic;
  shown because papers report it).
- ``fixed``: a threshold chosen on the VALIDATION split (Youden there) and applied unchanged to the test
  split, which is the honest number for a deployed model.
A case is called positive when ``p >= threshold``.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from cxrlab.evaluate import _fast
from cxrlab.evaluate._checks import binary_labels, probabilities, safe_div, same_length
from cxrlab.evaluate.bootstrap import DEFAULT_N_BOOT, bootstrap


def roc_auc(y_true, p) -> float:
    """Area under the ROC curve; NaN when only one class is present (undefined)."""
    y, p = binary_labels("y_true", y_true), probabilities("p", p)
    same_length(y_true=y, p=p)
    return _fast.auc_and_youden(y, p)[0]


def average_precision(y_true, p) -> float:
    """Area under the precision-recall curve (average precision); NaN without positives."""
    y, p = binary_labels("y_true", y_true), probabilities("p", p)
    same_length(y_true=y, p=p)
    return _fast.average_precision(y, p)


def brier(y_true, p) -> float:
    """Mean squared difference between probability and outcome (lower is better)."""
    y, p = binary_labels("y_true", y_true), probabilities("p", p)
    same_length(y_true=y, p=p)
    return float(np.mean((p - y) ** 2))


def youden_threshold(y_true, p) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (ties: the highest threshold)."""
    y, p = binary_labels("y_true", y_true), probabilities("p", p)
    same_length(y_true=y, p=p)
    return _fast.auc_and_youden(y, p)[1]


def threshold_metrics(y_true, p, threshold: float) -> dict[str, float]:
    """Confusion counts and sensitivity, specificity, PPV, NPV, accuracy, F1 at ``p >= threshold``."""
    y, p = binary_labels("y_true", y_true), probabilities("p", p)
    same_length(y_true=y, p=p)
    return _at_threshold(y, p, threshold)


def _at_threshold(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    pred = (p >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    return {
        "threshold": float(threshold),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "sensitivity": safe_div(tp, tp + fn),
        "specificity": safe_div(tn, tn + fp),
        "ppv": safe_div(tp, tp + fp),
        "npv": safe_div(tn, tn + fn),
        "accuracy": safe_div(tp + tn, len(y)),
        "f1": safe_div(2 * tp, 2 * tp + fp + fn),
    }


def roc_points(y_true, p) -> dict[str, list[float]]:
    """ROC curve (fpr, tpr, thresholds) as lists, for plotting and for metrics.json."""
    fpr, tpr, thr = roc_curve(binary_labels("y_true", y_true), probabilities("p", p))
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": np.where(np.isfinite(thr), thr, 1.0).tolist()}


def pr_points(y_true, p) -> dict[str, list[float]]:
    precision, recall, thr = precision_recall_curve(binary_labels("y_true", y_true), probabilities("p", p))
    return {"precision": precision.tolist(), "recall": recall.tolist(), "thresholds": thr.tolist()}


def binary_metrics(
    y_true,
    p,
    patient_ids=None,
    *,
    fixed_threshold: float | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
) -> dict:
    """All binary metrics with patient-level bootstrap CIs.

    ``fixed_threshold``: the operating point chosen on validation (see ``validation_threshold``); the Youden
    point is re-estimated inside each bootstrap sample so its interval includes the threshold's own noise.
    """
    y, p = binary_labels("y_true", y_true), probabilities("p", p)
    n = same_length(y_true=y, p=p)
    youden = youden_threshold(y, p)

    def stat(idx: np.ndarray) -> dict[str, float]:
        yy, pp = y[idx], p[idx]
        auc, t = _fast.auc_and_youden(yy, pp)
        out = {"auc": auc, "average_precision": _fast.average_precision(yy, pp),
               "brier": float(np.mean((pp - yy) ** 2)), "prevalence": float(yy.mean())}
        if np.isfinite(t):
            for k, v in _at_threshold(yy, pp, t).items():
                if k in ("sensitivity", "specificity", "ppv", "npv", "f1"):
                    out[f"youden.{k}"] = v
        if fixed_threshold is not None:
            for k, v in _at_threshold(yy, pp, fixed_threshold).items():
                if k in ("sensitivity", "specificity", "ppv", "npv", "accuracy", "f1"):
                    out[f"fixed.{k}"] = v
        return out

    est = bootstrap(stat, n, None if patient_ids is None else np.asarray(patient_ids), n_boot=n_boot, seed=seed)
    result: dict = {"n": n, "n_positive": int(y.sum()), "metrics": {k: e.as_dict() for k, e in est.items()}}
    if patient_ids is not None:
        result["n_patients"] = int(len(np.unique(np.asarray(patient_ids))))
    if np.isfinite(youden):
        result["youden"] = threshold_metrics(y, p, youden)
    if fixed_threshold is not None:
        result["fixed"] = threshold_metrics(y, p, fixed_threshold)
    return result


def validation_threshold(y_val, p_val) -> float:
    """The operating point fixed on the validation split: Youden's J there."""
    return youden_threshold(y_val, p_val)


__all__ = ["average_precision", "binary_metrics", "brier", "pr_points", "roc_auc", "roc_points",
           "threshold_metrics", "validation_threshold", "youden_threshold"]
