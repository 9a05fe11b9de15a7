"""A lateral (side-on) chest film of a phantom patient, for training and testing the view check of the
image-quality gate (:mod:`cxrlab.quality`).

The patient faces the image left: sternum and anterior chest wall on the left, spine on the right. Both lungs
project onto one aerated field between them; the heart overlaps its lower anterior part and the two
hemidiaphragms are two domes at its base. No masks: cxrlab segments frontal films only.
"""

from __future__ import annotations

import cv2
import numpy as np

from cxrlab.data.phantom.anatomy import _ONE, _SHIFT, Anatomy, Pose, _fill, _to_px
from cxrlab.data.phantom.render import _exposure, _rotate


def _vertebrae(layer: np.ndarray, x0: float, top: float, height: float, width: float, size: int) -> None:
    """Vertebral bodies: rounded boxes with brighter endplates, stacked down the back."""
    y = top
    while y < 1.0:
        x1, y1 = int(round(x0 * size)), int(round(y * size))
        x2, y2 = int(round((x0 + width) * size)), int(round((y + 0.82 * height) * size))
        cv2.rectangle(layer, (x1, y1), (x2, y2), 0.05, -1, cv2.LINE_AA)
        cv2.rectangle(layer, (x1, y1), (x2, y2), 0.09, max(1, size // 200), cv2.LINE_AA)
        y += height


def render_lateral(anat: Anatomy, pose: Pose, size: int, rng: np.random.Generator) -> np.ndarray:
    """One lateral radiograph (uint8, ``size`` x ``size``) of the patient ``anat`` in ``pose``."""
    u = rng.uniform
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    X, Y = np.meshgrid(grid, grid)
    dx, dy = pose.shift
    front, back = 0.12 + u(-0.03, 0.03) + dx, 0.86 + u(-0.03, 0.03) + dx  # chest wall (x) at mid-height
    t = np.linspace(0.0, 1.0, 20)
    ys = np.concatenate([[-0.05], 0.08 + dy + 0.9 * t, [1.05]])
    # the neck is narrow at the top, the chest deepest at the diaphragm, arms raised overlap the apex
    ant = np.concatenate([[front + 0.22], front + 0.18 * (1 - t) ** 3, [front]])
    post = np.concatenate([[back - 0.2], back - 0.12 * (1 - t) ** 3, [back]])
    body = _fill(size, _to_px(np.concatenate([ant, post[::-1]]), np.concatenate([ys, ys[::-1]]), size))

    top = min(anat.lung_top) + dy + u(0.0, 0.03)
    base = top + (max(anat.lung_base) - top) * pose.inspiration
    depth = back - front
    # one aerated field (both lungs superimposed): a rounded dome, lowest in the posterior gutter
    s = np.linspace(0.0, 2 * np.pi, 96)
    cx, cy, rx, ry = front + 0.52 * depth, (top + base) / 2 + 0.03, 0.4 * depth, (base - top) / 2 + 0.03
    lung_x = cx + rx * np.cos(s)
    lung_y = cy - ry * np.sin(s) * np.where(np.sin(s) > 0, 1.0, 0.8 + 0.25 * (np.cos(s) + 1) / 2)
    lung = _fill(size, _to_px(lung_x, lung_y, size)) & body
    heart = np.zeros((size, size), np.uint8)
    ax, ay = anat.heart_axes
    cv2.ellipse(heart, (int(round((front + 0.33 * depth) * size * _ONE)), int(round((base - 0.6 * ay) * size * _ONE))),
                (int(round(0.9 * ax * size * _ONE)), int(round(1.1 * ay * size * _ONE))), u(-30, -10), 0, 360, 1, -1,
                cv2.LINE_8, _SHIFT)
    abdomen = (Y > base + 0.03 + 0.04 * np.cos(np.pi * (X - front) / depth)).astype(np.uint8) & body

    density = body * (0.42 + 0.1 * np.clip(1 - ((X - (front + back) / 2) / (depth / 2)) ** 2, 0, 1))
    density -= 0.2 * lung * (1 - abdomen)
    density += 0.08 * heart * (1 - abdomen) + 0.05 * abdomen
    for k in range(2):  # two hemidiaphragm domes, slightly apart
        dome = np.zeros((size, size), np.float32)
        xs = front + depth * np.linspace(0.05, 0.95, 32)
        yv = base + 0.02 * k + u(-0.01, 0.01) - 0.07 * np.sin(np.pi * np.linspace(0.05, 0.95, 32))
        cv2.polylines(dome, [_to_px(xs, yv, size)], False, 1.0, max(1, size // 128), cv2.LINE_AA, _SHIFT)
        density += 0.04 * dome
    spine = np.zeros((size, size), np.float32)
    _vertebrae(spine, back - 0.17, anat.rib_start + dy, anat.rib_spacing * 1.1, 0.08, size)
    density += spine * body
    sternum = np.zeros((size, size), np.float32)
    cv2.polylines(sternum, [_to_px(np.array([front + 0.04, front + 0.02]), np.array([0.2 + dy, base - 0.1]), size)],
                  False, 1.0, max(2, size // 70), cv2.LINE_AA, _SHIFT)
    density += 0.07 * sternum
    trachea = np.zeros((size, size), np.float32)
    cv2.polylines(trachea, [_to_px(np.array([front + 0.35 * depth, front + 0.45 * depth]), np.array([0.0, 0.38 + dy]),
                                   size)], False, 1.0, max(2, int(0.03 * size)), cv2.LINE_AA, _SHIFT)
    density -= 0.06 * trachea
    ribs = np.zeros((size, size), np.float32)
    for k in range(9):  # both sides' ribs overlap obliquely across the field
        y0 = anat.rib_start + dy + k * anat.rib_spacing
        xs = np.linspace(back - 0.12, front + 0.1, 24)
        cv2.polylines(ribs, [_to_px(xs, y0 + 0.18 * (back - xs) + 0.02 * np.sin(6 * xs), size)], False, 1.0,
                      max(1, size // 90), cv2.LINE_AA, _SHIFT)
    density += 0.025 * ribs * body
    image = _exposure(density.astype(np.float32), rng, size)
    image, _ = _rotate(image, {}, pose.angle)
    return np.round(image * 255).astype(np.uint8)
