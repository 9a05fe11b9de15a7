"""Severity scores from a lung segmentation and a disease (infection) segmentation. Pure numpy.

Every score starts from three binary masks of one image: the patient's right lung ``R``, the patient's left lung
``L`` and the disease mask ``D``. Disease outside the lungs is discarded first (``D := D ∧ (R ∨ L)``). Zones
``A``–``F`` are the six lung zones (A, B, C = patient-right upper/middle/lower; D, E, F = patient-left
upper/middle/lower), computed by :func:`cxrlab.anatomy.lung_zones` (equal-area bands by default).

Definitions (percentages are ``round(100 * fraction)``, so a grade boundary never depends on float noise):

- ``lung_involvement``: per lung, ``|D ∧ lung| / |lung|`` (0–1); NaN when that lung's mask is empty.
- ``involvement_grade`` (opacity paper, per lung 0–3): 0 = 0 %, 1 = 1–33 %, 2 = 34–66 %, 3 = 67–100 %.
- ``extent_grade`` (Cohen geographic extent, per lung 0–4): 0 = 0 %, 1 = 1–25 %, 2 = 26–50 %, 3 = 51–75 %,
  4 = 76–100 %. ``geographic_extent`` = right + left, 0–8.
- ``opacity_score`` = right + left involvement grade, 0–6 (an *extent*-based proxy of Cohen's opacity score:
  a binary mask carries no density, so ground glass and consolidation are not told apart).
- ``zone_involvement``: per zone, ``|D ∧ zone| / |zone|`` (0–1); NaN when the zone is empty.
- ``zone_count_score`` (severity-scoring paper, 0–6): the number of zones whose involvement exceeds a threshold
  ``t``; ``t`` is chosen on validation data by :func:`fit_zone_threshold`.
- ``brixia_zone_scores`` (Brixia-style, 0–3 per zone): ``#{k : involvement > c_k}`` for ordered cut-points
  ``c_1 ≤ c_2 ≤ c_3``; ``brixia_total`` = sum over A–F, 0–18. The cut-points are fitted on BrixIA-scored
  training images by :func:`fit_brixia_cutpoints`.

A missing lung (empty mask while the other lung is present) gives NaN for that lung, its zones and every total
that needs it, so a failed Stage I is visible instead of silently halving a score. Both lungs empty, or masks of
different sizes, raise :class:`cxrlab.errors.InputError`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from cxrlab.data.schema import BRIXIA_ZONES
from cxrlab.errors import InputError

RIGHT_ZONES = BRIXIA_ZONES[:3]  # A, B, C: patient's right lung, top to bottom
LEFT_ZONES = BRIXIA_ZONES[3:]   # D, E, F: patient's left lung, top to bottom

# Upper bounds (inclusive, in rounded percent) of each grade above 0.
INVOLVEMENT_GRADE_BOUNDS = (33, 66, 100)
EXTENT_GRADE_BOUNDS = (25, 50, 75, 100)
DEFAULT_BRIXIA_CUTPOINTS = (0.0, 1 / 3, 2 / 3)
DEFAULT_ZONE_THRESHOLD = 0.0


def as_binary(mask: np.ndarray, name: str, source: object = "mask") -> np.ndarray:
    """A 2-D mask as bool; rejects anything that is not a 2-D array."""
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise InputError(source, f"expected a 2-D mask, got shape {arr.shape}", field=name)
    return arr > 0


def check_masks(
    disease: np.ndarray,
    patient_right: np.ndarray,
    patient_left: np.ndarray,
    *,
    image_shape: tuple[int, ...] | None = None,
    source: object = "masks",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and binarise the three masks: same 2-D size (and the image's, if given), some lung present."""
    d = as_binary(disease, "disease_mask", source)
    r = as_binary(patient_right, "patient_right_mask", source)
    l = as_binary(patient_left, "patient_left_mask", source)
    ref = tuple(image_shape[:2]) if image_shape is not None else r.shape
    for name, arr in (("disease_mask", d), ("patient_right_mask", r), ("patient_left_mask", l)):
        if arr.shape != ref:
            what = "image" if image_shape is not None else "patient_right_mask"
            raise InputError(source, f"mask size {arr.shape} differs from the {what} size {ref}", field=name)
    if not r.any() and not l.any():
        raise InputError(source, "lung mask is empty (no lung found): severity cannot be scored",
                         field="patient_right_mask/patient_left_mask")
    return d, r, l


def discard_outside_lungs(disease: np.ndarray, patient_right: np.ndarray, patient_left: np.ndarray) -> np.ndarray:
    """Disease restricted to the lungs: ``D ∧ (R ∨ L)``."""
    return np.asarray(disease, bool) & (np.asarray(patient_right, bool) | np.asarray(patient_left, bool))


def _fraction(disease: np.ndarray, region: np.ndarray) -> float:
    # count_nonzero, not sum: on boolean masks it is ~8x faster, and the service scores every image
    area = int(np.count_nonzero(region))
    return float("nan") if area == 0 else float(np.count_nonzero(disease & region)) / area


def lung_involvement(disease: np.ndarray, patient_right: np.ndarray, patient_left: np.ndarray) -> dict[str, float]:
    """Fraction of each lung covered by disease: ``{"right": f_R, "left": f_L}`` (NaN for an empty lung)."""
    d, r, l = check_masks(disease, patient_right, patient_left)
    d = discard_outside_lungs(d, r, l)
    return {"right": _fraction(d, r), "left": _fraction(d, l)}


def _percent(fraction: float | np.ndarray) -> np.ndarray:
    return np.round(100.0 * np.asarray(fraction, dtype=float))


def _grade(fraction: float | np.ndarray, bounds: Sequence[int]) -> np.ndarray:
    p = _percent(fraction)
    grade = np.where(p <= 0, 0.0, 1.0 + np.searchsorted(np.asarray(bounds[:-1]), p, side="left"))
    return np.where(np.isnan(p), np.nan, grade)


def involvement_grade(fraction: float | np.ndarray) -> np.ndarray:
    """Opacity paper's per-lung grade 0–3 (0 %, 1–33 %, 34–66 %, 67–100 %); NaN stays NaN."""
    return _grade(fraction, INVOLVEMENT_GRADE_BOUNDS)


def extent_grade(fraction: float | np.ndarray) -> np.ndarray:
    """Cohen geographic extent per lung 0–4 (0 %, 1–25 %, 26–50 %, 51–75 %, 76–100 %); NaN stays NaN."""
    return _grade(fraction, EXTENT_GRADE_BOUNDS)


def geographic_extent(right_fraction: float, left_fraction: float) -> float:
    """Cohen geographic extent 0–8: sum of the two per-lung extent grades (NaN if a lung is missing)."""
    return float(extent_grade(right_fraction) + extent_grade(left_fraction))


def opacity_score(right_fraction: float, left_fraction: float) -> float:
    """0–6: sum of the two per-lung involvement grades (NaN if a lung is missing)."""
    return float(involvement_grade(right_fraction) + involvement_grade(left_fraction))


def zone_involvement(disease: np.ndarray, zones: Mapping[str, np.ndarray]) -> np.ndarray:
    """Fraction of each zone A–F covered by disease, shape (6,); NaN for an empty or absent zone.

    ``zones`` maps the zone letters to binary masks of the disease mask's size. Disease outside every zone is
    ignored, so zones must already cover only the lungs.
    """
    d = as_binary(disease, "disease_mask")
    out = np.full(len(BRIXIA_ZONES), np.nan)
    for i, z in enumerate(BRIXIA_ZONES):
        if z not in zones:
            continue
        zm = as_binary(zones[z], f"zone_{z}")
        if zm.shape != d.shape:
            raise InputError("zones", f"zone mask size {zm.shape} differs from the disease mask {d.shape}",
                             field=f"zone_{z}")
        out[i] = _fraction(d, zm)
    return out


def zone_count_score(zone_fractions: np.ndarray, threshold: float = DEFAULT_ZONE_THRESHOLD) -> np.ndarray:
    """Severity-scoring paper's score 0–6: zones with involvement > ``threshold``; NaN if any zone is NaN.

    Works on one image (shape (6,)) or a batch (shape (N, 6)).
    """
    z = np.asarray(zone_fractions, dtype=float)
    count = (z > threshold).sum(axis=-1).astype(float)
    return np.where(np.isnan(z).any(axis=-1), np.nan, count)


def brixia_zone_scores(zone_fractions: np.ndarray,
                       cutpoints: Sequence[float] = DEFAULT_BRIXIA_CUTPOINTS) -> np.ndarray:
    """Brixia-style 0–3 per zone: the number of cut-points the zone's involvement exceeds; NaN stays NaN."""
    c = np.asarray(cutpoints, dtype=float)
    if c.shape != (3,) or np.any(np.diff(c) < 0):
        raise InputError("brixia_cutpoints", f"need three ascending cut-points, got {list(cutpoints)}")
    z = np.asarray(zone_fractions, dtype=float)
    score = (z[..., None] > c).sum(axis=-1).astype(float)
    return np.where(np.isnan(z), np.nan, score)


def brixia_total(zone_scores: np.ndarray) -> np.ndarray:
    """Brixia-style global score 0–18: sum over the six zones (NaN if a zone is missing)."""
    return np.asarray(zone_scores, dtype=float).sum(axis=-1)


# --- fitting on validation / training data ----------------------------------------------------------------------

def fit_threshold(x: np.ndarray, positive: np.ndarray) -> float:
    """Threshold ``t`` minimising the errors of the rule ``x > t`` against binary targets (NaNs dropped).

    Candidates are midpoints between consecutive distinct values, plus "all positive" and "all negative"; ties
    go to the smallest threshold. O(n log n).
    """
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(positive, dtype=float).ravel()
    if x.shape != y.shape:
        raise InputError("fit_threshold", f"{x.size} values but {y.size} targets")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep] > 0
    if x.size == 0:
        raise InputError("fit_threshold", "no valid (non-NaN) value/target pairs to fit on")
    u = np.unique(x)
    candidates = np.concatenate([[u[0] - 1e-9], (u[:-1] + u[1:]) / 2, [u[-1]]])
    pos, neg = np.sort(x[y]), np.sort(x[~y])
    false_neg = np.searchsorted(pos, candidates, side="right")     # positives with x <= t
    false_pos = neg.size - np.searchsorted(neg, candidates, side="right")  # negatives with x > t
    return float(candidates[int(np.argmin(false_neg + false_pos))])


def fit_zone_threshold(zone_fractions: np.ndarray, zone_affected: np.ndarray) -> float:
    """Choose the zone-count threshold on validation data.

    ``zone_fractions`` (N, 6): predicted zone involvement; ``zone_affected`` (N, 6): reference 0/1 per zone (e.g.
    ground-truth-mask involvement > 0, or a reader's zone score > 0). The threshold minimises the number of
    misclassified zones, which also minimises the summed |count error| bound of :func:`zone_count_score`.
    """
    return fit_threshold(zone_fractions, zone_affected)


def fit_brixia_cutpoints(zone_fractions: np.ndarray, zone_scores: np.ndarray) -> tuple[float, float, float]:
    """Fit the three Brixia cut-points on scored training images; minimises the zone-level MAE.

    For ordinal scores ``|s - y| = Σ_k |[s ≥ k] - [y ≥ k]|``, so each ``c_k`` is fitted alone as the best threshold
    for ``y ≥ k``; sorting the three afterwards keeps the rule monotone and does not increase the error.
    """
    x = np.asarray(zone_fractions, dtype=float).ravel()
    y = np.asarray(zone_scores, dtype=float).ravel()
    if x.shape != y.shape:
        raise InputError("fit_brixia_cutpoints", f"{x.size} zone fractions but {y.size} zone scores")
    cuts = []
    for k in (1, 2, 3):
        target = np.where(np.isnan(y), np.nan, (y >= k).astype(float))
        cuts.append(fit_threshold(x, target))
    c = sorted(cuts)
    return (c[0], c[1], c[2])


# --- one image: every score in one flat record ---------------------------------------------------------------

def score_masks(
    disease: np.ndarray,
    patient_right: np.ndarray,
    patient_left: np.ndarray,
    zones: Mapping[str, np.ndarray],
    *,
    zone_threshold: float = DEFAULT_ZONE_THRESHOLD,
    brixia_cutpoints: Sequence[float] = DEFAULT_BRIXIA_CUTPOINTS,
    image_shape: tuple[int, ...] | None = None,
    source: object = "masks",
) -> dict[str, float]:
    """Every score of one image as a flat ``{name: value}`` record (NaN where a lung is missing).

    Keys: ``involvement_{right,left,lungs}``, ``grade_{right,left}``, ``extent_{right,left}``,
    ``geographic_extent``, ``opacity_score``, ``zone_involvement_{A..F}``, ``zone_count``, ``brixia_{A..F}``,
    ``brixia_global``, ``disease_outside_lungs_px`` (discarded pixels).
    """
    d, r, l = check_masks(disease, patient_right, patient_left, image_shape=image_shape, source=source)
    inside = discard_outside_lungs(d, r, l)
    f_r, f_l = _fraction(inside, r), _fraction(inside, l)
    zf = zone_involvement(inside, zones)
    # A zone of a missing lung is NaN even if the zone function returned something for it.
    if np.isnan(f_r):
        zf[:3] = np.nan
    if np.isnan(f_l):
        zf[3:] = np.nan
    bz = brixia_zone_scores(zf, brixia_cutpoints)
    rec: dict[str, float] = {
        "involvement_right": f_r,
        "involvement_left": f_l,
        "involvement_lungs": float("nan") if np.isnan(f_r + f_l) else _fraction(inside, r | l),
        "grade_right": float(involvement_grade(f_r)),
        "grade_left": float(involvement_grade(f_l)),
        "extent_right": float(extent_grade(f_r)),
        "extent_left": float(extent_grade(f_l)),
        "geographic_extent": geographic_extent(f_r, f_l),
        "opacity_score": opacity_score(f_r, f_l),
        "zone_count": float(zone_count_score(zf, zone_threshold)),
        "brixia_global": float(brixia_total(bz)),
        "disease_outside_lungs_px": float(np.count_nonzero(d & ~(r | l))),
    }
    for i, z in enumerate(BRIXIA_ZONES):
        rec[f"zone_involvement_{z}"] = float(zf[i])
        rec[f"brixia_{z}"] = float(bz[i])
    return rec
