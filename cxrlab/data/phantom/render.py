"""Turn anatomy + disease + pose into one radiograph with its masks and exact ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cxrlab.data.phantom.anatomy import Anatomy, Pose, render_anatomy
from cxrlab.data.phantom.disease import DiseasePattern, draw_disease
from cxrlab.data.phantom.truth import truth_from_masks

MASK_NAMES = ("lungs", "right_lung", "left_lung", "heart", "disease", "consolidation")


@dataclass
class RenderedStudy:
    image: np.ndarray               # uint8 HxW
    masks: dict[str, np.ndarray]    # MASK_NAMES -> uint8 {0,1}
    truth: dict[str, float | int]


def _exposure(density: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    blurred = cv2.GaussianBlur(density, (0, 0), rng.uniform(0.6, 1.4) * size / 256)
    contrast, offset, gamma = rng.uniform(1.05, 1.4), rng.uniform(-0.02, 0.06), rng.uniform(0.8, 1.25)
    img = np.clip(blurred * contrast + offset, 0, 1) ** gamma
    grain = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 0.7)
    img = img + rng.uniform(0.008, 0.025) * rng.standard_normal((size, size)).astype(np.float32) + 0.01 * grain
    return np.clip(img, 0, 1).astype(np.float32)


def _rotate(image: np.ndarray, masks: dict[str, np.ndarray], angle: float) -> tuple[np.ndarray, dict]:
    """Same affine for image (bilinear) and masks (nearest, so a mask inside another stays inside it)."""
    size = image.shape[0]
    m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
    img = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    rot = {k: cv2.warpAffine(v, m, (size, size), flags=cv2.INTER_NEAREST, borderValue=0) for k, v in masks.items()}
    return img, rot


def _marker(img: np.ndarray, text: str, rng: np.random.Generator) -> None:
    """Burn a lead-marker-like label into an upper corner (outside the body, like real side markers)."""
    size = img.shape[0]
    scale = 0.45 * size / 256
    thick = max(1, int(round(size / 200)))
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x = size - w - int(0.03 * size) if text == "L" or rng.random() < 0.5 else int(0.03 * size)
    layer = np.zeros(img.shape, np.uint8)  # OpenCV draws text on 8-bit images only
    cv2.putText(layer, text, (x, int(0.03 * size) + h), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thick, cv2.LINE_AA)
    np.maximum(img, layer.astype(np.float32) * (0.95 / 255), out=img)


def render_study(anat: Anatomy, pattern: DiseasePattern, severity: float, pose: Pose, size: int,
                 rng: np.random.Generator, marker: str | None = None) -> RenderedStudy:
    parts = render_anatomy(anat, pose, size, rng)
    disease, consolidation, added = draw_disease(pattern, severity, parts["right_lung"], parts["left_lung"], rng)
    image = _exposure(parts["density"] + added, rng, size)
    masks = {
        "lungs": parts["right_lung"] | parts["left_lung"], "right_lung": parts["right_lung"],
        "left_lung": parts["left_lung"], "heart": parts["heart"], "disease": disease,
        "consolidation": consolidation,
    }
    image, masks = _rotate(image, masks, pose.angle)
    if marker:
        _marker(image, marker, rng)
    truth = truth_from_masks(masks["right_lung"], masks["left_lung"], masks["disease"], masks["consolidation"])
    return RenderedStudy(np.round(image * 255).astype(np.uint8), masks, truth)
