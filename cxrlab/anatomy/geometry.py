"""Geometry on lung masks: the midline between the patient's right and left chest, half-images, lung zones.

Midline (the opacity paper's "spine" scheme): in every image row where both lungs are present, the point
half-way between the right lung's medial edge and the left lung's medial edge; a line ``x = slope*y + x0``
is fitted to those points with a robust (Huber-weighted, iterated) fit, so it follows a rotated chest. Without
overlapping rows it falls back to the perpendicular bisector of the two lung centroids.

Zones (Brixia naming): A/B/C = patient-right upper/middle/lower, D/E/F = patient-left upper/middle/lower.
``equal_height`` cuts each lung's vertical extent into equal thirds (as the Brixia score and the phantom's
truth do); ``equal_area`` cuts where the cumulative lung area along the rows reaches 1/3 and 2/3 (the
severity-scoring paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from cxrlab.errors import InputError

ZONE_NAMES = {"right": ("A", "B", "C"), "left": ("D", "E", "F")}


@dataclass(frozen=True)
class Midline:
    """The line ``x = slope * y + x0`` in image pixels (the patient's right chest is on the image's left)."""

    slope: float
    x0: float

    def x_at(self, y: np.ndarray | float) -> np.ndarray | float:
        return self.slope * np.asarray(y, dtype=np.float64) + self.x0

    @property
    def angle_deg(self) -> float:
        """Tilt from vertical, degrees (positive: the line leans right going down the image)."""
        return float(np.degrees(np.arctan(self.slope)))

    def sides(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Boolean ``(patient_right_side, patient_left_side)`` half-planes over an image of ``shape``."""
        h, w = shape
        xs = np.arange(w)[None, :]
        line = self.x_at(np.arange(h))[:, None]
        return xs < line, xs >= line


def _robust_line(ys: np.ndarray, xs: np.ndarray, iterations: int = 10) -> tuple[float, float]:
    """Fit x = a*y + b by iteratively reweighted least squares with Huber weights (ragged lung edges)."""
    w = np.ones_like(xs, dtype=np.float64)
    a, b = 0.0, float(np.median(xs))
    A = np.stack([ys, np.ones_like(ys)], axis=1).astype(np.float64)
    for _ in range(iterations):
        sw = np.sqrt(w)
        (a, b), *_ = np.linalg.lstsq(A * sw[:, None], xs * sw, rcond=None)
        r = xs - (a * ys + b)
        scale = 1.4826 * np.median(np.abs(r)) + 1e-6
        k = 1.345 * scale
        w = np.where(np.abs(r) <= k, 1.0, k / np.abs(r))
    return float(a), float(b)


def estimate_midline(patient_right: np.ndarray, patient_left: np.ndarray) -> Midline:
    """The split line between the patient's right and left chest from the two lung masks."""
    r, l = patient_right.astype(bool), patient_left.astype(bool)
    if r.shape != l.shape:
        raise InputError("lung masks", f"right {r.shape} and left {l.shape} masks differ in size")
    if not r.any() or not l.any():
        raise InputError("lung masks", "the midline needs both lungs; "
                         f"{'patient_right' if not r.any() else 'patient_left'} mask is empty")
    w = r.shape[1]
    cols = np.arange(w)
    # Medial edges: right lung's right-most pixel, left lung's left-most pixel, per row.
    r_med = np.where(r, cols[None, :], -1).max(axis=1)
    l_med = np.where(l, cols[None, :], w).min(axis=1)
    rows = np.flatnonzero((r_med >= 0) & (l_med < w) & (l_med > r_med))
    if len(rows) >= max(5, int(0.1 * r.shape[0] / 4)):
        mids = (r_med[rows] + l_med[rows]) / 2.0
        a, b = _robust_line(rows.astype(np.float64), mids)
        return Midline(a, b)
    # Fallback: perpendicular bisector of the centroids.
    (ry, rx), (ly, lx) = (np.argwhere(m).mean(axis=0) for m in (r, l))
    my, mx = (ry + ly) / 2, (rx + lx) / 2
    dx, dy = lx - rx, ly - ry
    slope = -dy / dx if abs(dx) > 1e-6 else 0.0  # the bisector's x changes by -dy/dx per unit y
    return Midline(float(slope), float(mx - slope * my))


def split_halves(image: np.ndarray, midline: Midline, mirror_left: bool = False) -> dict[str, np.ndarray]:
    """Two half-images: each side of the midline, the other side set to 0, cropped to its columns.

    ``mirror_left=True`` flips the patient-left half so both halves show the lung with the spine on the
    same side (a single model can then grade either lung).
    """
    h, w = image.shape[-2:]
    right_side, left_side = midline.sides((h, w))
    line = midline.x_at(np.arange(h))
    r_end = int(np.clip(np.ceil(line.max()), 1, w))
    l_start = int(np.clip(np.floor(line.min()), 0, w - 1))
    right = np.where(right_side, image, 0)[..., :, :r_end]
    left = np.where(left_side, image, 0)[..., :, l_start:]
    if mirror_left:
        left = left[..., ::-1]
    return {"patient_right": np.ascontiguousarray(right).astype(image.dtype),
            "patient_left": np.ascontiguousarray(left).astype(image.dtype)}


def _cut_rows(lung: np.ndarray, strategy: str) -> tuple[int, int, int, int] | None:
    """Row boundaries ``(top, cut1, cut2, bottom_exclusive)`` of the three zones of one lung."""
    per_row = lung.sum(axis=1).astype(np.float64)
    rows = np.flatnonzero(per_row)
    if len(rows) == 0:
        return None
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    if strategy == "equal_height":
        height = bottom - top
        # Same rule as the phantom's truth: row y is in band floor(3*(y-top)/height).
        c1 = top + -(-height // 3)
        c2 = top + -(-2 * height // 3)
        return top, c1, c2, bottom
    cum = np.cumsum(per_row)
    total = cum[-1]
    c1 = int(np.searchsorted(cum, total / 3.0, side="left")) + 1
    c2 = int(np.searchsorted(cum, 2.0 * total / 3.0, side="left")) + 1
    return top, c1, max(c1, c2), bottom


def lung_zones(patient_right_mask: np.ndarray, patient_left_mask: np.ndarray,
               strategy: Literal["equal_height", "equal_area"] = "equal_height") -> dict[str, np.ndarray]:
    """Zone masks ``{"A".."F": uint8 HxW}`` (A/B/C patient-right upper/middle/lower, D/E/F patient-left).

    An empty lung gives three empty zones.
    """
    if strategy not in ("equal_height", "equal_area"):
        raise InputError("lung_zones", f"strategy must be 'equal_height' or 'equal_area', got {strategy!r}",
                         field="strategy")
    if patient_right_mask.shape != patient_left_mask.shape:
        raise InputError("lung_zones", f"right {patient_right_mask.shape} and left {patient_left_mask.shape} "
                         "masks differ in size")
    zones: dict[str, np.ndarray] = {}
    for side, lung in (("right", patient_right_mask), ("left", patient_left_mask)):
        lung = lung.astype(bool)
        cuts = _cut_rows(lung, strategy)
        for i, name in enumerate(ZONE_NAMES[side]):
            z = np.zeros(lung.shape, dtype=np.uint8)
            if cuts is not None:
                z[cuts[i]:cuts[i + 1]] = lung[cuts[i]:cuts[i + 1]]
            zones[name] = z
    return zones
