"""Overlay PNGs: the radiograph, the lung contour and the heatmap in one picture."""

from __future__ import annotations

import os

import cv2
import numpy as np
from pytorch_grad_cam.utils.image import show_cam_on_image

from cxrlab.explain.hcs import _mask_like
from cxrlab.utils import atomic_write_bytes

LUNG_CONTOUR_RGB = (0, 255, 0)


def overlay(image: np.ndarray, heatmap: np.ndarray, lung_mask: np.ndarray | None = None,
            image_weight: float = 0.6) -> np.ndarray:
    """``H×W×3`` uint8 RGB: jet heatmap blended on the grey image, lung contour in green."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:  # C×H×W or H×W×C: show the first (image) channel
        img = img[0] if img.shape[0] < img.shape[-1] else img[..., 0]
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != img.shape:
        heat = cv2.resize(heat, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    rgb = show_cam_on_image(np.repeat(img[..., None], 3, axis=2), np.clip(heat, 0, 1), use_rgb=True,
                            image_weight=image_weight)
    if lung_mask is not None:
        mask = _mask_like(lung_mask, img.shape).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, LUNG_CONTOUR_RGB, max(1, img.shape[0] // 128))
    return rgb


def png_bytes(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def save_overlay(path: str | os.PathLike, image: np.ndarray, heatmap: np.ndarray,
                 lung_mask: np.ndarray | None = None) -> None:
    atomic_write_bytes(path, png_bytes(overlay(image, heatmap, lung_mask)))
