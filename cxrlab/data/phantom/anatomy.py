"""Phantom anatomy: a patient's chest geometry and its rendering into masks and an attenuation map.

Coordinates are normalised (x towards image right, y down, both 0..1) and scaled to pixels only when drawn.
The patient's right lung is on the IMAGE LEFT (frontal PA/AP view); the heart bulges to the image right.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_SHIFT = 4  # cv2 fractional bits: polygons and ellipses are placed with 1/16-pixel precision
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class Anatomy:
    """Patient-level chest geometry (fixed across a patient's studies). Pairs are (patient_right, patient_left)."""

    midline: float
    body_half_width: float
    shoulder_y: float
    lung_top: tuple[float, float]
    lung_base: tuple[float, float]          # costophrenic angle height
    lung_lateral: tuple[float, float]       # lateral edge distance from the midline
    lung_medial: tuple[float, float]        # medial edge distance from the midline
    dome_height: tuple[float, float]        # diaphragm dome rise above the costophrenic angle
    heart_offset: float                     # heart centre right of the midline (towards patient left)
    heart_rise: float                       # heart centre above the diaphragm, in heart half-heights
    heart_axes: tuple[float, float]
    heart_angle: float                      # degrees
    mediastinum_half_width: float
    spine_half_width: float
    rib_start: float                        # y of the first posterior rib at the spine
    rib_spacing: float
    rib_curve: float
    clavicle_y: float
    breast: bool


@dataclass(frozen=True)
class Pose:
    """Study-level variation: inspiration depth, projection, patient position, rotation."""

    inspiration: float = 1.0   # scales the lungs' vertical extent
    ap: bool = False           # AP projection magnifies the heart
    shift: tuple[float, float] = (0.0, 0.0)
    angle: float = 0.0         # degrees, applied to image and masks together


def sample_anatomy(rng: np.random.Generator, sex: str) -> Anatomy:
    u = rng.uniform
    top = u(0.10, 0.15)
    base_r = u(0.75, 0.83)
    lateral = u(0.31, 0.37)
    return Anatomy(
        midline=0.5 + u(-0.015, 0.015),
        body_half_width=u(0.40, 0.46),
        shoulder_y=u(0.07, 0.12),
        lung_top=(top + u(-0.01, 0.01), top + u(-0.01, 0.01)),
        # the right hemidiaphragm sits higher (liver); the left lung is usually narrower (heart)
        lung_base=(base_r, base_r + u(0.01, 0.04)),
        lung_lateral=(lateral + u(-0.01, 0.02), lateral + u(-0.02, 0.01)),
        lung_medial=(u(0.035, 0.05), u(0.035, 0.05)),
        dome_height=(u(0.05, 0.09), u(0.04, 0.08)),
        heart_offset=u(0.04, 0.08),
        heart_rise=u(0.75, 1.0),
        heart_axes=(u(0.12, 0.16), u(0.09, 0.12)),
        heart_angle=u(-30.0, -10.0),
        mediastinum_half_width=u(0.045, 0.06),
        spine_half_width=u(0.028, 0.036),
        rib_start=u(0.10, 0.13),
        rib_spacing=u(0.055, 0.065),
        rib_curve=u(0.7, 1.1),
        clavicle_y=u(0.10, 0.14),
        breast=sex == "F" and bool(rng.random() < 0.8),
    )


def _to_px(xs: np.ndarray, ys: np.ndarray, size: int) -> np.ndarray:
    pts = np.stack([xs * size, ys * size], axis=1) * _ONE
    return np.round(pts).astype(np.int32)


def _fill(size: int, polygon: np.ndarray) -> np.ndarray:
    out = np.zeros((size, size), np.uint8)
    cv2.fillPoly(out, [polygon], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return out


def _lung_outline(mid: float, side: int, top: float, base: float, lateral: float, medial: float,
                  dome: float, n: int = 48) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Closed outline (x, y) of one lung and its diaphragm curve (x, y). ``side`` -1: image left, +1: image right."""
    apex = medial + 0.4 * (lateral - medial)
    s = np.linspace(0.0, 1.0, n)
    lat_d = apex + (lateral - apex) * np.sqrt(1.0 - (1.0 - s) ** 2)  # rounded apex and shoulder
    lat_y = top + s * (base - top)
    r = np.linspace(0.0, 1.0, n)[1:]
    medial_base = base - 0.35 * dome
    dia_d = lateral + r * (medial - lateral)
    dia_y = base + r * (medial_base - base) - dome * np.sin(np.pi * r) ** 0.8
    s_up = np.linspace(1.0, 0.0, n)[1:-1]
    med_d = medial + (apex - medial) * np.clip(1.0 - s_up / 0.2, 0.0, None) ** 2
    med_y = top + s_up * (medial_base - top)
    d = np.concatenate([lat_d, dia_d, med_d])
    y = np.concatenate([lat_y, dia_y, med_y])
    return mid + side * d, y, mid + side * np.concatenate([[lateral], dia_d]), np.concatenate([[base], dia_y])


def render_anatomy(anat: Anatomy, pose: Pose, size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Masks (uint8 {0,1}) and an attenuation map (float32, ~0 air .. ~0.8 bone) before disease and rotation.

    Returns keys ``right_lung``, ``left_lung`` (patient sides), ``heart``, ``body`` and ``density``.
    """
    mid = anat.midline + pose.shift[0]
    dy = pose.shift[1]
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    X, Y = np.meshgrid(grid, grid)

    # body outline: neck, rounded shoulders, chest wall
    bw = anat.body_half_width
    sy = anat.shoulder_y + dy
    t = np.linspace(0.0, 1.0, 16)
    ys = np.concatenate([[-0.05], sy - 0.03 + 0.2 * t, [1.05]])
    half = np.concatenate([[0.09], 0.1 + (bw - 0.1) * np.sqrt(1.0 - (1.0 - t) ** 3), [bw * 0.97]])
    body = _fill(size, _to_px(np.concatenate([mid - half, (mid + half)[::-1]]),
                              np.concatenate([ys, ys[::-1]]), size))

    lungs_raw, dia_x, dia_y = [], [], []
    for i, side in enumerate((-1, +1)):  # patient right = image left
        top = anat.lung_top[i] + dy
        base = top + (anat.lung_base[i] - anat.lung_top[i]) * pose.inspiration
        xs, ys_, dx_, dy_ = _lung_outline(mid, side, top, base, anat.lung_lateral[i], anat.lung_medial[i],
                                          anat.dome_height[i])
        lungs_raw.append(_fill(size, _to_px(xs, ys_, size)))
        dia_x.append(dx_)
        dia_y.append(dy_)
    # below the domes (and between them) is abdomen; beyond the lungs laterally, the dome line stays flat
    dx = np.concatenate([dia_x[0][::-1], dia_x[1]])
    dyv = np.concatenate([dia_y[0][::-1], dia_y[1]])
    order = np.argsort(dx)
    dome_line = np.interp(grid, dx[order], dyv[order]).astype(np.float32)
    abdomen = (Y > dome_line[None, :]).astype(np.uint8) & body

    heart_scale = 1.12 if pose.ap else 1.0
    ax, ay = anat.heart_axes
    heart_x = mid + anat.heart_offset
    heart_y = float(np.interp(heart_x, grid, dome_line)) - anat.heart_rise * ay * heart_scale  # sits on the dome
    heart_full = np.zeros((size, size), np.uint8)
    cv2.ellipse(heart_full, (int(round(heart_x * size * _ONE)), int(round(heart_y * size * _ONE))),
                (int(round(ax * heart_scale * size * _ONE)), int(round(ay * heart_scale * size * _ONE))),
                anat.heart_angle, 0, 360, 1, -1, cv2.LINE_8, _SHIFT)
    heart = heart_full & (1 - abdomen)

    mw = anat.mediastinum_half_width
    widen = np.clip((Y - sy) / 0.5, 0, 1) * 0.015  # mediastinum widens towards the heart
    mediastinum = ((np.abs(X - mid) < mw + widen) & (Y > sy - 0.05)).astype(np.uint8)
    knob = (((X - (mid + mw + 0.01)) ** 2 + (Y - (0.33 + dy)) ** 2) < 0.032 ** 2).astype(np.uint8)  # aortic knob
    mediastinum = (mediastinum | knob) & (1 - abdomen)

    blocked = heart | mediastinum | abdomen
    right_lung = lungs_raw[0] & (1 - blocked) & body
    left_lung = lungs_raw[1] & (1 - blocked) & body

    # attenuation map: soft tissue thicker at the centre, air in the lungs, bone on top
    profile = np.clip(1.0 - ((X - mid) / bw) ** 2, 0, 1)
    density = body * (0.38 + 0.17 * profile)
    lungs = right_lung | left_lung
    density -= 0.24 * lungs
    density += 0.07 * heart + 0.09 * mediastinum * (1 - heart) + 0.04 * abdomen

    spine = (np.abs(X - mid) < anat.spine_half_width) & (Y > sy - 0.05)
    vertebra = 0.5 + 0.5 * np.cos(2 * np.pi * (Y - anat.rib_start) / (anat.rib_spacing * 0.9)) ** 8  # endplates
    density += spine * (0.025 + 0.035 * vertebra)

    density -= _airways(mid, dy, size) * (1 - lungs)  # trachea and main bronchi: air inside the mediastinum
    density += _vessels(X, Y, mid, anat, lungs, rng, size)
    density += _ribs(anat, mid, dy, size, body, lungs) * (1.0 - 0.7 * abdomen)  # hidden by the liver
    density += _clavicles(anat, mid, dy, size)
    if anat.breast:
        for side in (-1, +1):
            c = (mid + side * 0.24, anat.lung_base[0] + dy - 0.02)
            density += 0.06 * body * (((X - c[0]) / 0.17) ** 2 + ((Y - c[1]) / 0.11) ** 2 < 1)

    return {
        "right_lung": right_lung, "left_lung": left_lung, "heart": heart, "body": body,
        "density": density.astype(np.float32),
    }


def _vessels(X: np.ndarray, Y: np.ndarray, mid: float, anat: Anatomy, lungs: np.ndarray,
             rng: np.random.Generator, size: int) -> np.ndarray:
    """Branching-looking vascular markings: ridges of a smooth random field, fading away from the hila."""
    field = cv2.resize(rng.standard_normal((24, 24)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    ridges = np.clip(1.0 - np.abs(field) * 4.0, 0, 1)
    hilum_d = np.minimum(np.hypot(X - (mid - 0.09), Y - 0.45), np.hypot(X - (mid + 0.09), Y - 0.47))
    return (0.07 * ridges * np.exp(-hilum_d / 0.12) * lungs).astype(np.float32)


def _ribs(anat: Anatomy, mid: float, dy: float, size: int, body: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """Posterior ribs: arcs from the spine, rising laterally then sweeping down, drawn as thick AA lines."""
    layer = np.zeros((size, size), np.float32)
    thickness = max(1, int(round(0.014 * size)))
    d = np.linspace(0.03, anat.body_half_width, 32)
    for k in range(10):
        y0 = anat.rib_start + dy + k * anat.rib_spacing
        for side in (-1, +1):
            # rise to about a third of the way, then fall: a rib seen from behind
            y = y0 - 0.04 * anat.rib_curve * np.sin(np.pi * d / 0.5) + 0.32 * anat.rib_curve * (d / 0.45) ** 2.0
            pts = _to_px(mid + side * d, y, size)
            cv2.polylines(layer, [pts], False, 1.0, thickness, cv2.LINE_AA, _SHIFT)
    # the cortex is brighter than the marrow: outline = rib minus its eroded self
    core = cv2.erode(layer, np.ones((3, 3), np.uint8))
    rib = 0.03 * layer + 0.03 * (layer - core)
    return rib * body * (0.6 + 0.4 * lungs)


def _airways(mid: float, dy: float, size: int) -> np.ndarray:
    """Trachea down to the carina, then the two main bronchi towards the hila (drawn as dark AA lines)."""
    layer = np.zeros((size, size), np.float32)
    carina = 0.34 + dy
    cv2.polylines(layer, [_to_px(np.array([mid, mid]), np.array([0.0, carina]), size)], False, 1.0,
                  max(1, int(round(0.028 * size))), cv2.LINE_AA, _SHIFT)
    for side, drop in ((-1, 0.05), (+1, 0.07)):  # the left main bronchus is longer and more horizontal
        xs = np.array([mid, mid + side * 0.035, mid + side * 0.07])
        ys = np.array([carina, carina + drop * 0.6, carina + drop])
        cv2.polylines(layer, [_to_px(xs, ys, size)], False, 1.0, max(1, int(round(0.016 * size))), cv2.LINE_AA,
                      _SHIFT)
    return 0.07 * layer


def _clavicles(anat: Anatomy, mid: float, dy: float, size: int) -> np.ndarray:
    layer = np.zeros((size, size), np.float32)
    thickness = max(2, int(round(0.026 * size)))
    d = np.linspace(0.035, 0.30, 24)
    for side in (-1, +1):
        y = anat.clavicle_y + dy + 0.03 * np.sin(np.pi * d / 0.3) - 0.07 * (d - 0.035)
        cv2.polylines(layer, [_to_px(mid + side * d, y, size)], False, 1.0, thickness, cv2.LINE_AA, _SHIFT)
    return 0.13 * layer
