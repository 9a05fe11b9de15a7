"""Mask overlays for people: outlines of each structure and the midline drawn on the radiograph."""

from __future__ import annotations

import cv2
import numpy as np

from cxrlab.data import schema

# BGR-free RGB colours: patient-right lung orange, patient-left lung cyan, heart magenta, midline yellow.
COLOURS = {schema.KEY_RIGHT_MASK: (255, 140, 0), schema.KEY_LEFT_MASK: (0, 200, 255),
           schema.KEY_HEART_MASK: (230, 0, 200), schema.KEY_DISEASE_MASK: (255, 40, 40)}


def mask_overlay(image: np.ndarray, masks: dict[str, np.ndarray], alpha: float = 0.25,
                 midline: bool = True) -> np.ndarray:
    """RGB uint8 H×W×3: tinted structures with outlines; the midline when both lungs are present."""
    grey = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    thickness = max(1, round(max(image.shape) / 256))
    for key, colour in COLOURS.items():
        m = masks.get(key)
        if m is None or not m.any():
            continue
        c = np.array(colour, np.float32)
        rgb[m > 0] = (1 - alpha) * rgb[m > 0] + alpha * c
    out = np.ascontiguousarray(np.clip(rgb, 0, 255).astype(np.uint8))
    for key, colour in COLOURS.items():
        m = masks.get(key)
        if m is None or not m.any():
            continue
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour, thickness)
    r, l = masks.get(schema.KEY_RIGHT_MASK), masks.get(schema.KEY_LEFT_MASK)
    if midline and r is not None and l is not None and r.any() and l.any():
        from cxrlab.anatomy.geometry import estimate_midline

        line = estimate_midline(r, l)
        h = image.shape[0]
        cv2.line(out, (round(float(line.x_at(0))), 0), (round(float(line.x_at(h - 1))), h - 1), (255, 230, 0),
                 thickness)
    return out
