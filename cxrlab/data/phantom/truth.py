"""Ground truth computed from the masks actually drawn (after rotation), so it is exact by construction.

Definitions (left/right are the PATIENT's):

- ``involvement_right/left``: disease pixels / lung pixels of that lung (0..1).
- zones: each lung's rows from its top-most to bottom-most lung pixel are cut into three equal-height bands
  (upper, middle, lower). A/B/C = patient-right upper/middle/lower, D/E/F = patient-left upper/middle/lower.
  ``zone_involvement_X`` = disease pixels / lung pixels inside zone X.
- ``opacity_right/left`` (per-lung grade): 0 if no disease pixel; 1 if 0 < f <= 1/3; 2 if 1/3 < f <= 2/3;
  3 if f > 2/3 (the 0 %, 1-33 %, 34-66 %, 67-100 % bands).
- ``brixia_X`` (0-3 per zone): the same bands applied to ``zone_involvement_X``; ``brixia_global`` = sum (0-18).
- ``geographic_extent`` (Cohen, 0-8): per lung 0 none, 1 if f < 25 %, 2 if < 50 %, 3 if < 75 %, 4 otherwise; summed.
- ``opacity_score`` (Cohen, 0-6): per lung 0 no disease; 1 ground glass (consolidation < 10 % of the disease);
  2 consolidation (>= 10 % of the disease); 3 white-out (consolidation covers > 75 % of the lung); summed.
"""

from __future__ import annotations

import numpy as np

from cxrlab.data import schema

ZONE_INVOLVEMENT_COLUMNS = [f"zone_involvement_{z}" for z in schema.BRIXIA_ZONES]


def zone_map(lung: np.ndarray) -> np.ndarray:
    """int8 map: -1 outside the lung, 0/1/2 upper/middle/lower equal-height thirds of its vertical extent."""
    out = np.full(lung.shape, -1, np.int8)
    rows = np.flatnonzero(lung.any(axis=1))
    if rows.size == 0:
        return out
    top, height = rows[0], rows[-1] - rows[0] + 1
    band = np.clip((3 * (np.arange(lung.shape[0]) - top)) // height, 0, 2).astype(np.int8)
    return np.where(lung > 0, band[:, None], out).astype(np.int8)


def grade_thirds(fraction: float) -> int:
    """0 for no involvement, then 1/2/3 for (0, 1/3], (1/3, 2/3], (2/3, 1]."""
    if fraction <= 0:
        return 0
    return 1 if fraction <= 1 / 3 else 2 if fraction <= 2 / 3 else 3


def geographic_extent_lung(fraction: float) -> int:
    if fraction <= 0:
        return 0
    return 1 if fraction < 0.25 else 2 if fraction < 0.5 else 3 if fraction < 0.75 else 4


def opacity_score_lung(disease_px: int, consolidation_px: int, lung_px: int) -> int:
    if disease_px == 0:
        return 0
    if lung_px and consolidation_px / lung_px > 0.75:
        return 3
    return 2 if consolidation_px >= 0.1 * disease_px else 1


def truth_from_masks(right_lung: np.ndarray, left_lung: np.ndarray, disease: np.ndarray,
                     consolidation: np.ndarray | None = None) -> dict[str, float | int]:
    """All phantom severity labels from binary masks (any size; disease outside the lungs is ignored)."""
    consolidation = np.zeros_like(disease) if consolidation is None else consolidation
    out: dict[str, float | int] = {}
    zone_names = iter(schema.BRIXIA_ZONES)
    ge = opac = 0
    for lung, side in ((right_lung > 0, "right"), (left_lung > 0, "left")):
        sick = (disease > 0) & lung
        n_lung, n_sick = int(lung.sum()), int(sick.sum())
        f = n_sick / n_lung if n_lung else 0.0
        out[f"involvement_{side}"] = round(f, 6)
        out[f"opacity_{side}"] = grade_thirds(f)
        ge += geographic_extent_lung(f)
        opac += opacity_score_lung(n_sick, int(((consolidation > 0) & lung).sum()), n_lung)
        zones = zone_map(lung)
        for z in range(3):
            name = next(zone_names)
            in_zone = zones == z
            n_zone = int(in_zone.sum())
            zf = int((sick & in_zone).sum()) / n_zone if n_zone else 0.0
            out[f"zone_involvement_{name}"] = round(zf, 6)
            out[f"brixia_{name}"] = grade_thirds(zf)
    out[schema.BRIXIA_GLOBAL] = sum(int(out[c]) for c in schema.BRIXIA_COLUMNS)
    out[schema.GEOGRAPHIC_EXTENT] = ge
    out[schema.OPACITY_SCORE] = opac
    return out
