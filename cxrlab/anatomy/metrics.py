"""Overlap and boundary metrics for binary masks (numpy/scipy only).

Dice = 2|A∩B| / (|A|+|B|); Jaccard = |A∩B| / |A∪B|; both are 1.0 when both masks are empty.
HD95 = the 95th percentile of the symmetric set of surface-to-surface distances (both directions pooled, as in
MedPy/MONAI), in pixels times ``spacing``; NaN when exactly one mask is empty, 0 when both are.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred.astype(bool), truth.astype(bool)
    denom = p.sum() + t.sum()
    return 1.0 if denom == 0 else float(2.0 * (p & t).sum() / denom)


def jaccard(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred.astype(bool), truth.astype(bool)
    union = (p | t).sum()
    return 1.0 if union == 0 else float((p & t).sum() / union)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), border_value=0)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: float | tuple[float, float] = 1.0) -> float:
    p, t = pred.astype(bool), truth.astype(bool)
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float("nan")
    sp, st = _surface(p), _surface(t)
    dt_t = ndimage.distance_transform_edt(~st, sampling=spacing)
    dt_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return float(np.percentile(np.concatenate([dt_t[sp], dt_p[st]]), 95))


def mask_metrics(pred: np.ndarray, truth: np.ndarray, spacing: float | tuple[float, float] = 1.0) -> dict[str, float]:
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in size")
    return {"dice": dice(pred, truth), "jaccard": jaccard(pred, truth), "hd95": hd95(pred, truth, spacing)}
