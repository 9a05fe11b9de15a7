"""Single-label multiclass metrics: accuracy, one-vs-rest P/R/F1, macro and support-weighted averages,
confusion matrix (rows = true class, columns = predicted class), one-vs-rest AUCs from probabilities."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from cxrlab.errors import InputError
from cxrlab.evaluate import _fast
from cxrlab.evaluate._checks import as_1d, same_length
from cxrlab.evaluate.bootstrap import DEFAULT_N_BOOT, bootstrap


def _labels(name: str, y, n_classes: int) -> np.ndarray:
    arr = as_1d(name, y)
    if not np.all(np.equal(np.mod(arr, 1), 0)) or arr.min() < 0 or arr.max() >= n_classes:
        raise InputError("metrics", f"class indices must be integers in 0..{n_classes - 1}", field=name)
    return arr.astype(int)


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Counts; ``cm[i, j]`` = images of true class i predicted as j."""
    y, yp = _labels("y_true", y_true, n_classes), _labels("y_pred", y_pred, n_classes)
    same_length(y_true=y, y_pred=yp)
    return _fast.confusion(y, yp, n_classes)


def classification_scores(y_true, y_pred, n_classes: int) -> dict[str, float]:
    """Flat dict: accuracy, macro/weighted P/R/F1 and per-class ``precision[k]`` etc. (one-vs-rest)."""
    y, yp = _labels("y_true", y_true, n_classes), _labels("y_pred", y_pred, n_classes)
    same_length(y_true=y, y_pred=yp)
    return _scores(y, yp, n_classes)


def _scores(y: np.ndarray, yp: np.ndarray, n_classes: int) -> dict[str, float]:
    cm = _fast.confusion(y, yp, n_classes)
    p, r, f, s = _fast.prf_from_confusion(cm)
    out = {"accuracy": float(np.trace(cm) / cm.sum())}
    # macro averages over the classes that occur in truth or prediction (scikit-learn's default label set);
    # a class absent from both has no defined score
    seen = (s > 0) | (cm.sum(axis=0) > 0)
    out["macro_precision"] = float(p[seen].mean())
    out["macro_recall"] = float(r[seen].mean())
    out["macro_f1"] = float(f[seen].mean())
    # the opacity paper's support-weighted averages (sklearn average="weighted")
    w = s / s.sum()
    out.update({"weighted_precision": float(w @ p), "weighted_recall": float(w @ r), "weighted_f1": float(w @ f)})
    # per class, an undefined score is NaN rather than sklearn's 0: precision of a class never predicted,
    # recall of a class absent from the truth (so bootstrap resamples without the class do not drag CIs to 0)
    predicted = cm.sum(axis=0)
    for k in range(n_classes):
        out[f"precision[{k}]"] = float(p[k]) if predicted[k] > 0 else float("nan")
        out[f"recall[{k}]"] = float(r[k]) if s[k] > 0 else float("nan")
        out[f"f1[{k}]"] = float(f[k]) if s[k] + predicted[k] > 0 else float("nan")
        out[f"support[{k}]"] = int(s[k])
    return out


def ovr_auc(y_true, probs: np.ndarray, n_classes: int) -> dict[str, float]:
    """One-vs-rest ROC-AUC per class and their macro mean (classes without positives or negatives: NaN)."""
    y = _labels("y_true", y_true, n_classes)
    probs = np.asarray(probs, dtype=float)
    out = {}
    for k in range(n_classes):
        yk = (y == k).astype(int)
        out[f"auc[{k}]"] = _fast.auc_and_youden(yk, probs[:, k])[0]
    vals = [v for v in out.values() if np.isfinite(v)]
    out["macro_auc"] = float(np.mean(vals)) if vals else float("nan")
    return out


def multiclass_metrics(
    y_true,
    y_pred=None,
    classes: Sequence[str] | None = None,
    *,
    probs: np.ndarray | None = None,
    patient_ids=None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
) -> dict:
    """Every multiclass metric with patient-level bootstrap CIs; ``y_pred`` defaults to argmax of ``probs``."""
    if probs is not None:
        probs = np.asarray(probs, dtype=float)
        if y_pred is None:
            y_pred = probs.argmax(axis=1)
    if y_pred is None:
        raise InputError("metrics", "need predicted classes or probabilities", field="y_pred")
    n_classes = len(classes) if classes is not None else int(max(np.max(y_true), np.max(y_pred))) + 1
    classes = list(classes) if classes is not None else [str(k) for k in range(n_classes)]
    y, yp = _labels("y_true", y_true, n_classes), _labels("y_pred", y_pred, n_classes)
    n = same_length(y_true=y, y_pred=yp)
    if probs is not None and probs.shape != (n, n_classes):
        raise InputError("metrics", f"probabilities have shape {probs.shape}, expected {(n, n_classes)}",
                         field="probs")

    def stat(idx: np.ndarray) -> dict[str, float]:
        out = {k: v for k, v in _scores(y[idx], yp[idx], n_classes).items()
               if not k.startswith("support")}
        if probs is not None:
            out.update(ovr_auc(y[idx], probs[idx], n_classes))
        return out

    est = bootstrap(stat, n, None if patient_ids is None else np.asarray(patient_ids), n_boot=n_boot, seed=seed)
    return {
        "n": n,
        "classes": classes,
        "support": [int((y == k).sum()) for k in range(n_classes)],
        "metrics": {k: e.as_dict() for k, e in est.items()},
        "confusion_matrix": confusion_matrix(y, yp, n_classes).tolist(),
    }
