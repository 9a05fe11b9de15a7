"""Lung biomarkers per image and plausibility flags, so downstream stages can refuse or warn.

Cardiothoracic ratio (CTR): the heart's maximal horizontal width over the thorax's maximal horizontal width,
the thorax measured between the outer edges of the two lungs (the usual lung-mask proxy for the inner rib
margins).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cxrlab.errors import InputError


def _width(mask: np.ndarray) -> int:
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[-1] - cols[0] + 1) if len(cols) else 0


def lung_biomarkers(image: np.ndarray, patient_right_mask: np.ndarray, patient_left_mask: np.ndarray,
                    heart_mask: np.ndarray | None = None, *, min_lung_fraction: float = 0.02,
                    max_overlap: float = 0.01, min_area_ratio: float = 0.25) -> dict[str, Any]:
    """Areas, intensity statistics, CTR and flags.

    Flags: ``right_lung_missing`` / ``left_lung_missing`` (empty mask), ``right_lung_too_small`` /
    ``left_lung_too_small`` (below ``min_lung_fraction`` of the image), ``lungs_overlap`` (shared pixels above
    ``max_overlap`` of the smaller lung), ``lung_size_asymmetry`` (smaller/larger area below
    ``min_area_ratio``). ``plausible`` is True when no flag is raised.
    """
    r, l = patient_right_mask.astype(bool), patient_left_mask.astype(bool)
    image = np.asarray(image, dtype=np.float32)
    for name, m in (("patient_right_mask", r), ("patient_left_mask", l)) + (
            (("heart_mask", heart_mask),) if heart_mask is not None else ()):
        if m.shape != image.shape[-2:]:
            raise InputError("biomarkers", f"mask size {m.shape} differs from image size {image.shape[-2:]}",
                             field=name)
    grey = image if image.ndim == 2 else image[0]
    n = grey.size
    out: dict[str, Any] = {}
    flags: list[str] = []
    for side, m in (("right", r), ("left", l)):
        area = int(m.sum())
        vals = grey[m]
        out[f"{side}_lung_area_px"] = area
        out[f"{side}_lung_area_frac"] = area / n
        out[f"{side}_lung_mean"] = float(vals.mean()) if area else float("nan")
        out[f"{side}_lung_std"] = float(vals.std()) if area else float("nan")
        if area == 0:
            flags.append(f"{side}_lung_missing")
        elif area < min_lung_fraction * n:
            flags.append(f"{side}_lung_too_small")
    ar, al = out["right_lung_area_px"], out["left_lung_area_px"]
    out["lung_area_px"] = int((r | l).sum())
    out["lung_area_frac"] = out["lung_area_px"] / n
    overlap = int((r & l).sum())
    out["lung_overlap_px"] = overlap
    if ar and al and overlap > max_overlap * min(ar, al):
        flags.append("lungs_overlap")
    if ar and al and min(ar, al) / max(ar, al) < min_area_ratio:
        flags.append("lung_size_asymmetry")
    out["right_left_area_ratio"] = ar / al if al else float("nan")
    if heart_mask is not None:
        heart = heart_mask.astype(bool)
        thorax = _width(r | l)
        out["heart_area_px"] = int(heart.sum())
        out["heart_width_px"] = _width(heart)
        out["thorax_width_px"] = thorax
        out["cardiothoracic_ratio"] = out["heart_width_px"] / thorax if thorax and heart.any() else float("nan")
    out["flags"] = flags
    out["plausible"] = not flags
    return out
