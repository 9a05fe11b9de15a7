"""Vectorised cores of the metrics (ROC, average precision, confusion-matrix scores, weighted kappa).

The bootstrap evaluates every metric ~1000 times per table cell; scikit-learn's per-call input validation
costs milliseconds each time, so the cores are plain numpy here and the tests pin them to scikit-learn.
"""

from __future__ import annotations

import numpy as np


def roc_counts(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (tp, fp) at each distinct threshold, thresholds descending (as sklearn's roc_curve)."""
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(p_sorted)), len(p_sorted) - 1]  # last index of each distinct value
    tp = np.cumsum(y_sorted)[last]
    fp = (last + 1) - tp
    return tp.astype(float), fp.astype(float), p_sorted[last]


def auc_and_youden(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(ROC-AUC, Youden threshold); NaN for both when one class is missing."""
    n_pos = y.sum()
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan"), float("nan")
    tp, fp, thr = roc_counts(y, p)
    tpr = np.r_[0.0, tp / n_pos]
    fpr = np.r_[0.0, fp / n_neg]
    auc = float(np.trapezoid(tpr, fpr))
    j = tpr[1:] - fpr[1:]
    return auc, float(thr[int(np.argmax(j))])


def average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """sum_n (R_n - R_{n-1}) P_n over distinct thresholds (sklearn's definition, no interpolation)."""
    n_pos = y.sum()
    if n_pos == 0:
        return float("nan")
    tp, fp, _ = roc_counts(y, p)
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def confusion(y: np.ndarray, yp: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(y * n_classes + yp, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def prf_from_confusion(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1, support; 0 where undefined (sklearn's zero_division=0)."""
    tp = np.diag(cm).astype(float)
    pred = cm.sum(axis=0).astype(float)
    support = cm.sum(axis=1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred > 0, tp / pred, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        denom = pred + support
        f1 = np.where(denom > 0, 2 * tp / denom, 0.0)
    return precision, recall, f1, support


def weighted_kappa(cm: np.ndarray, power: int = 2) -> float:
    """Cohen's kappa with weights |i - j|^power from a confusion matrix (power 2 = quadratic)."""
    k = cm.shape[0]
    n = cm.sum()
    idx = np.arange(k)
    w = np.abs(idx[:, None] - idx[None, :]) ** power
    expected = np.outer(cm.sum(axis=1), cm.sum(axis=0)) / n
    den = (w * expected).sum()
    return float(1 - (w * cm).sum() / den) if den > 0 else float("nan")
