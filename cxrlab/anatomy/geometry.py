"""Geometry on lung masks: the midline between the patient's right and left chest, half-images, lung zones.

Midline (the opacity paper's "spine" scheme): the axis about which the two-lung mask is most nearly
mirror-symmetric, found by search over tilt and offset, so it turns with a rotated chest.

Zones (Brixia naming): A/B/C = patient-right upper/middle/lower, D/E/F = patient-left upper/middle/lower.
``equal_height`` cuts each lung's vertical extent into equal thirds (as the Brixia score and the phantom's
truth do); ``equal_area`` cuts where the cumulative lung area along the rows reaches 1/3 and 2/3 (the
severity-scoring paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
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


def _reflect(mask: np.ndarray, angle_deg: float, point: tuple[float, float]) -> np.ndarray:
    """Mirror ``mask`` across the line through ``point`` (x, y) tilted ``angle_deg`` from vertical."""
    t = np.radians(angle_deg)
    d = np.array([np.sin(t), np.cos(t)])  # unit direction (x, y) of the line
    refl = 2 * np.outer(d, d) - np.eye(2)
    p = np.asarray(point, dtype=np.float64)
    m = np.hstack([refl, (p - refl @ p)[:, None]])
    h, w = mask.shape
    return cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)


def _symmetry(mask: np.ndarray, angle: float, point: tuple[float, float]) -> float:
    mirrored = _reflect(mask, angle, point)
    return 2.0 * float((mask & mirrored).sum()) / float(mask.sum() + mirrored.sum())


def estimate_midline(patient_right: np.ndarray, patient_left: np.ndarray, max_angle: float = 30.0) -> Midline:
    """The split line between the patient's right and left chest from the two lung masks.

    The chest is close to mirror-symmetric about the spine, so the midline is taken as the axis that best
    mirrors the two-lung mask onto itself (largest Dice with its reflection): a search over tilt, then over
    the offset across the line, then the tilt again. It turns with the chest, unlike row-wise edge rules,
    which are biased by the heart and by the curved lateral margins.
    """
    r, l = patient_right.astype(bool), patient_left.astype(bool)
    if r.shape != l.shape:
        raise InputError("lung masks", f"right {r.shape} and left {l.shape} masks differ in size")
    if not r.any() or not l.any():
        raise InputError("lung masks", "the midline needs both lungs; "
                         f"{'patient_right' if not r.any() else 'patient_left'} mask is empty")
    scale = min(1.0, 128.0 / max(r.shape))  # the search runs on a <= 128 px copy
    small = cv2.resize((r | l).astype(np.uint8), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    if not small.any():
        small = (r | l).astype(np.uint8)
        scale = 1.0
    (cy, cx) = np.argwhere(small).mean(axis=0)
    # start between the lungs: half-way between the two lungs' centroids
    (_, rx), (_, lx) = (np.argwhere(m).mean(axis=0) * scale for m in (r, l))
    point = np.array([(rx + lx) / 2.0, cy])
    angle = 0.0
    width = small.shape[1]
    for step in (2.0, 0.5):
        angles = np.arange(-max_angle, max_angle + 1e-9, step) if step == 2.0 else angle + np.arange(-2, 2.01, step)
        angle = max(angles, key=lambda a: _symmetry(small, a, tuple(point)))
        normal = np.array([np.cos(np.radians(angle)), -np.sin(np.radians(angle))])
        offsets = np.arange(-0.1 * width, 0.1 * width + 1e-9, max(0.5, step / 2))
        best = max(offsets, key=lambda o: _symmetry(small, angle, tuple(point + o * normal)))
        point = point + best * normal
    slope = float(np.tan(np.radians(angle)))
    px, py = point / scale
    return Midline(slope, float(px - slope * py))


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
