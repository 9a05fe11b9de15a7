"""Calibration: reliability curve and expected calibration error (ECE) over equal-width bins.

Binary: confidence = p(positive), outcome = label (the reliability diagram of scikit-learn's
``calibration_curve(strategy="uniform")``, same bin edges). Multiclass: top-label calibration,
confidence = max probability, outcome = prediction correct.
ECE = sum over non-empty bins b of (n_b / N) * |mean outcome_b - mean confidence_b|.
"""

from __future__ import annotations

import numpy as np

from cxrlab.evaluate._checks import as_1d, probabilities, same_length


def reliability_curve(outcome, confidence, n_bins: int = 10) -> dict[str, list[float]]:
    """Per non-empty bin: mean confidence, observed frequency, count, and the bin edges."""
    y = as_1d("outcome", outcome)
    c = probabilities("confidence", confidence)
    same_length(outcome=y, confidence=c)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # same assignment as sklearn.calibration.calibration_curve: bins are (e_i, e_{i+1}], first one closed
    ids = np.searchsorted(edges[1:-1], c)
    counts = np.bincount(ids, minlength=n_bins)
    sum_c = np.bincount(ids, weights=c, minlength=n_bins)
    sum_y = np.bincount(ids, weights=y, minlength=n_bins)
    keep = counts > 0
    return {
        "confidence": (sum_c[keep] / counts[keep]).tolist(),
        "observed": (sum_y[keep] / counts[keep]).tolist(),
        "count": counts[keep].astype(int).tolist(),
        "bin_low": edges[:-1][keep].tolist(),
        "bin_high": edges[1:][keep].tolist(),
    }


def expected_calibration_error(outcome, confidence, n_bins: int = 10) -> float:
    curve = reliability_curve(outcome, confidence, n_bins)
    counts = np.asarray(curve["count"], dtype=float)
    gaps = np.abs(np.asarray(curve["observed"]) - np.asarray(curve["confidence"]))
    return float((counts * gaps).sum() / counts.sum())


def top_label(y_true, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(correct, confidence) of the arg-max class, for multiclass calibration."""
    probs = np.asarray(probs, dtype=float)
    y = as_1d("y_true", y_true).astype(int)
    return (probs.argmax(axis=1) == y).astype(float), probs.max(axis=1)


def calibration(outcome, confidence, n_bins: int = 10) -> dict:
    return {"ece": expected_calibration_error(outcome, confidence, n_bins), "n_bins": n_bins,
            "curve": reliability_curve(outcome, confidence, n_bins)}
