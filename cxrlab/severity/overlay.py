"""Overlay PNG of one scored image: lung contours, predicted disease in red, the ground-truth disease outline
(when known) in magenta, zone boundaries and each zone's score."""

from __future__ import annotations

import os
from typing import Mapping

import cv2
import numpy as np

from cxrlab.data.schema import BRIXIA_ZONES
from cxrlab.errors import InputError
from cxrlab.utils import atomic_write_bytes

# BGR colours (OpenCV order)
LUNG_BGR = (80, 220, 80)
ZONE_BGR = (0, 220, 255)
DISEASE_BGR = (0, 0, 255)
TRUTH_BGR = (255, 0, 255)  # magenta: apart from the red fill, the green lungs and the yellow zones
TEXT_BGR = (255, 255, 255)


def _contours(mask: np.ndarray) -> list[np.ndarray]:
    found, _ = cv2.findContours(np.asarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return list(found)


def render_overlay(
    image: np.ndarray,
    patient_right: np.ndarray,
    patient_left: np.ndarray,
    disease: np.ndarray,
    zones: Mapping[str, np.ndarray],
    record: Mapping[str, float],
    *,
    alpha: float = 0.45,
    truth_disease: np.ndarray | None = None,
) -> np.ndarray:
    """RGB uint8 overlay. ``disease`` should already be restricted to the lungs; ``record`` from ``score_masks``;
    ``truth_disease``: a reference disease mask of the same size, drawn as an outline over the prediction."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise InputError("overlay", f"expected a 2-D grayscale image, got shape {img.shape}", field="image")
    gray = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    out = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    d = np.asarray(disease, bool)
    red = np.zeros_like(out)
    red[:] = DISEASE_BGR
    out[d] = (out[d] * (1 - alpha) + red[d] * alpha).astype(np.uint8)
    thick = max(1, round(min(img.shape) / 256))
    for z in BRIXIA_ZONES:
        if z in zones:
            cv2.drawContours(out, _contours(zones[z]), -1, ZONE_BGR, thick)
    for lung in (patient_right, patient_left):
        cv2.drawContours(out, _contours(lung), -1, LUNG_BGR, thick + 1)
    if truth_disease is not None:
        truth = np.asarray(truth_disease, bool)
        if truth.shape != d.shape:
            raise InputError("overlay", f"ground-truth disease mask {truth.shape} is not the image's size {d.shape}",
                             field="mask_disease")
        cv2.drawContours(out, _contours(truth), -1, TRUTH_BGR, thick + 1)
    scale = max(0.3, min(img.shape) / 600)
    for z in BRIXIA_ZONES:
        zm = np.asarray(zones.get(z, np.zeros(0)), bool)
        if zm.size == 0 or not zm.any():
            continue
        ys, xs = np.nonzero(zm)
        score = record.get(f"brixia_{z}", float("nan"))
        label = f"{z}{'?' if np.isnan(score) else int(score)}"
        org = (int(xs.mean()) - int(12 * scale), int(ys.mean()) + int(6 * scale))
        cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_BGR, thick, cv2.LINE_AA)
    total = record.get("brixia_global", float("nan"))
    caption = "Brixia " + ("?" if np.isnan(total) else str(int(total))) + "/18"
    cv2.putText(out, caption, (4, int(18 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, TEXT_BGR, thick, cv2.LINE_AA)
    if truth_disease is not None:
        legend = "red: predicted, magenta: reference"
        cv2.putText(out, legend, (4, out.shape[0] - 6), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.7, TRUTH_BGR, thick,
                    cv2.LINE_AA)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def write_overlay(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an RGB overlay as PNG, atomically."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.asarray(rgb, np.uint8), cv2.COLOR_RGB2BGR))
    if not ok:
        raise InputError(path, "could not encode the overlay as PNG")
    atomic_write_bytes(path, buf.tobytes())
