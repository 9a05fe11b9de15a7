"""Heatmap Concordance Score (HCS): how much of a heatmap's positive mass lies inside the lungs.

Definition (per image). Let H be the heatmap as cxrlab computes it (CAM values in [0, 1], min-max scaled per
image, at the image's size) and L the binary lung mask (both lungs). With threshold tau (default 0.5):

    M(x) = H(x) if H(x) >= tau else 0          (the heatmap's positive mass)
    HCS  = sum_{x in L} M(x) / sum_x M(x)      (NaN when sum_x M(x) = 0)

HCS = 1: all salient mass inside the lungs; a heatmap that ignores anatomy scores about the lungs' share of
the image (``lung_fraction``, reported alongside as the chance level). Macro HCS: the mean over classes of
the mean HCS of the images of that (true) class, so small classes count as much as large ones.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from cxrlab.errors import InputError

DEFAULT_THRESHOLD = 0.5


def _mask_like(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.asarray(mask) > 0
    if mask.shape != shape:  # nearest neighbour keeps the mask binary
        mask = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    return mask


def heatmap_concordance(heatmap: np.ndarray, lung_mask: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> float:
    """HCS of one ``H×W`` heatmap against its lung mask (resized to the heatmap if needed)."""
    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2:
        raise InputError("heatmap", f"expected an H×W map, got shape {h.shape}")
    if not 0 <= threshold < 1:
        raise InputError("heatmap", f"threshold must lie in [0, 1), got {threshold}", field="threshold")
    lungs = _mask_like(lung_mask, h.shape)
    mass = np.where(h >= threshold, h, 0.0)
    total = mass.sum()
    return float(mass[lungs].sum() / total) if total > 0 else float("nan")


def lung_fraction(lung_mask: np.ndarray) -> float:
    """Share of the image inside the lungs: the HCS a spatially uniform heatmap would get."""
    return float((np.asarray(lung_mask) > 0).mean())


def macro_hcs(values: Sequence[float], classes: Sequence) -> dict:
    """``{"macro": mean over classes, "per_class": {class: mean}, "n": {class: images}}`` (NaNs skipped)."""
    v = np.asarray(values, dtype=float)
    c = np.asarray([str(x) for x in classes])
    if len(v) != len(c):
        raise InputError("hcs", f"{len(v)} scores for {len(c)} class labels")
    per_class, counts = {}, {}
    for cls in sorted(set(c.tolist())):
        sel = v[(c == cls) & np.isfinite(v)]
        counts[cls] = int(len(sel))
        if len(sel):
            per_class[cls] = float(sel.mean())
    macro = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return {"macro": macro, "per_class": per_class, "n": counts}
