"""Heatmap Concordance Score (HCS): how much of a heatmap's salient area lies inside the lungs.

Let H be the heatmap as cxrlab computes it (CAM values in [0, 1], min-max scaled per image, in the model's input
frame) and L the binary lung mask (both lungs, or the lung of a per-side input). Two definitions, by name:

- ``nonzero`` (default; the opacity paper's): the share of the heatmap's non-zero pixels that lie inside the
  lungs, ``HCS = #{x in L : H(x) > 0} / #{x : H(x) > 0}``.
- ``mass``: the share of the heatmap's mass at or above ``threshold`` (tau, default 0.5) of its peak that lies
  inside the lungs, ``M(x) = H(x) if H(x) >= tau else 0``, ``HCS = sum_{x in L} M(x) / sum_x M(x)``. It ignores
  the faint tail of a CAM that the pixel count weighs as much as its peak (cxrlab's earlier definition).

Either is NaN when nothing counts (an all-zero heatmap). HCS = 1: all salience inside the lungs; a heatmap that
ignores anatomy scores about the lungs' share of the image (``lung_fraction``, reported alongside as the chance
level). Macro HCS: the mean over classes of the mean HCS of the images of that (true) class, so small classes
count as much as large ones.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from cxrlab.errors import InputError
from cxrlab.registry import Registry

DEFAULT_THRESHOLD = 0.5
DEFAULT_DEFINITION = "nonzero"
#: name -> ``share(heatmap, lungs, threshold) -> float`` (heatmap float H×W, lungs bool H×W)
HCS_DEFINITIONS: Registry = Registry("HCS definition")


def _mask_like(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.asarray(mask) > 0
    if mask.shape != shape:  # nearest neighbour keeps the mask binary
        mask = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    return mask


@HCS_DEFINITIONS.register("nonzero", description="share of the non-zero heatmap pixels inside the lungs (paper)")
def nonzero_share(heatmap: np.ndarray, lungs: np.ndarray, threshold: float) -> float:
    salient = heatmap > 0
    total = int(salient.sum())
    return float((salient & lungs).sum() / total) if total else float("nan")


@HCS_DEFINITIONS.register("mass", description="share of the heatmap mass at or above the threshold inside the lungs")
def mass_share(heatmap: np.ndarray, lungs: np.ndarray, threshold: float) -> float:
    mass = np.where(heatmap >= threshold, heatmap, 0.0)
    total = mass.sum()
    return float(mass[lungs].sum() / total) if total > 0 else float("nan")


def heatmap_concordance(heatmap: np.ndarray, lung_mask: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                        definition: str = DEFAULT_DEFINITION) -> float:
    """HCS of one ``H×W`` heatmap against its lung mask (resized to the heatmap if needed); ``definition``
    names one of ``HCS_DEFINITIONS`` (``threshold`` is used by ``mass`` only)."""
    share = HCS_DEFINITIONS.get(definition)  # an unknown name: ConfigError listing the known ones
    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2:
        raise InputError("heatmap", f"expected an H×W map, got shape {h.shape}")
    if not 0 <= threshold < 1:
        raise InputError("heatmap", f"threshold must lie in [0, 1), got {threshold}", field="threshold")
    return share(h, _mask_like(lung_mask, h.shape), threshold)


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
