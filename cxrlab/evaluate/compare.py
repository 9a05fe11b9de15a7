"""Paired comparison of two models' AUCs on the same films (an arm of a study against its baseline).

>>> compare_aucs(y, p_baseline, p_arm, patient_id)
{"auc_a": {...}, "auc_b": {...}, "difference": {...}, "bootstrap_p": 0.03, "delong": {"z": 2.1, "p": 0.035}}

``difference`` is AUC(b) − AUC(a) with a patient-level paired bootstrap interval (both models scored on the same
resampled patients); ``bootstrap_p`` the two-sided share of resamples whose difference falls on the other side
of zero. DeLong's test is given too; it treats films as independent, so with several films per patient it is
optimistic, and the bootstrap is the figure to quote.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from cxrlab.errors import InputError
from cxrlab.evaluate.binary import roc_auc
from cxrlab.evaluate.bootstrap import DEFAULT_N_BOOT, bootstrap_indices


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: per positive, the share of negatives it outranks (ties half); per
    negative, the share of positives that outrank it."""
    neg_sorted, pos_sorted = np.sort(neg), np.sort(pos)
    lo, hi = np.searchsorted(neg_sorted, pos, "left"), np.searchsorted(neg_sorted, pos, "right")
    v10 = (lo + 0.5 * (hi - lo)) / len(neg)
    lo, hi = np.searchsorted(pos_sorted, neg, "left"), np.searchsorted(pos_sorted, neg, "right")
    v01 = (len(pos) - hi + 0.5 * (hi - lo)) / len(pos)
    return v10, v01


def delong_test(y: Sequence[int], p_a: Sequence[float], p_b: Sequence[float]) -> dict[str, float]:
    """DeLong's test for two correlated AUCs: ``auc_a``, ``auc_b``, ``z`` (of b − a) and the two-sided ``p``."""
    y = np.asarray(y).astype(int)
    if len(np.unique(y)) != 2:
        raise InputError("compare", "DeLong's test needs both classes", field="y")
    comps = []
    for p in (np.asarray(p_a, float), np.asarray(p_b, float)):
        comps.append(_placements(p[y == 1], p[y == 0]))
    v10 = np.stack([c[0] for c in comps])
    v01 = np.stack([c[1] for c in comps])
    aucs = v10.mean(axis=1)
    m, n = v10.shape[1], v01.shape[1]
    cov = np.cov(v10) / m + np.cov(v01) / n
    var = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = aucs[1] - aucs[0]
    z = diff / math.sqrt(var) if var > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "z": float(z),
            "p": float(math.erfc(abs(z) / math.sqrt(2)))}


def compare_aucs(y: Sequence[float], p_a: Sequence[float], p_b: Sequence[float], patient_id: Sequence[Any], *,
                 n_boot: int = DEFAULT_N_BOOT, seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """AUC of ``p_a`` and ``p_b`` on the same films and their paired difference (b − a), patient-level bootstrap."""
    y, p_a, p_b = np.asarray(y, float), np.asarray(p_a, float), np.asarray(p_b, float)
    pid = np.asarray(patient_id).astype(str)
    if not (len(y) == len(p_a) == len(p_b) == len(pid)):
        raise InputError("compare", f"lengths differ: y {len(y)}, a {len(p_a)}, b {len(p_b)}, patients {len(pid)}")
    keep = np.isfinite(y) & np.isfinite(p_a) & np.isfinite(p_b)
    y, p_a, p_b, pid = y[keep].astype(int), p_a[keep], p_b[keep], pid[keep]
    if len(np.unique(y)) != 2:
        raise InputError("compare", "both classes are needed to compare AUCs", field="y")
    point = (roc_auc(y, p_a), roc_auc(y, p_b))
    draws = []
    for idx in bootstrap_indices(pid, n_boot, seed):
        if len(np.unique(y[idx])) == 2:
            draws.append((roc_auc(y[idx], p_a[idx]), roc_auc(y[idx], p_b[idx])))
    boot = np.asarray(draws).reshape(-1, 2)

    def estimate(value: float, samples: np.ndarray) -> dict[str, float]:
        if len(samples) < max(10, n_boot // 10):
            return {"value": float(value), "low": math.nan, "high": math.nan, "n_boot": int(len(samples))}
        lo, hi = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
        return {"value": float(value), "low": float(lo), "high": float(hi), "n_boot": int(len(samples))}

    diff = boot[:, 1] - boot[:, 0]
    observed = point[1] - point[0]
    # two-sided: twice the share of resamples on the far side of zero from the observed difference
    far = (diff <= 0).mean() if observed > 0 else (diff >= 0).mean() if observed < 0 else 1.0
    return {"n_images": int(len(y)), "n_patients": int(len(np.unique(pid))),
            "auc_a": estimate(point[0], boot[:, 0]), "auc_b": estimate(point[1], boot[:, 1]),
            "difference": estimate(observed, diff), "bootstrap_p": float(min(1.0, 2 * far)) if len(diff) else math.nan,
            "delong": delong_test(y, p_a, p_b)}
