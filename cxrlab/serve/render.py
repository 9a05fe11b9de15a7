"""What the viewer shows: the display image, lung contours as polygons, a transparent heatmap, an overlay PNG."""

from __future__ import annotations

import cv2
import numpy as np

DISPLAY_MAX_SIDE = 1024
LUNG_BGR = {"patient_right": (80, 220, 80), "patient_left": (255, 170, 60), "disease": (60, 60, 255)}


def display_scale(shape: tuple[int, int], max_side: int = DISPLAY_MAX_SIDE) -> float:
    return min(1.0, max_side / max(shape))


def to_display(image: np.ndarray, scale: float) -> np.ndarray:
    """float [0, 1] HxW -> uint8, downscaled (area interpolation) so PNGs stay small for any input size."""
    gray = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    if scale < 1.0:
        size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return gray


def resize_to(arr: np.ndarray, shape: tuple[int, int], *, nearest: bool = False) -> np.ndarray:
    if arr.shape[:2] == tuple(shape):
        return arr
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(arr, (shape[1], shape[0]), interpolation=interp)


def contours(mask: np.ndarray, scale: float = 1.0, max_points: int = 200) -> list[list[list[float]]]:
    """External contours of a binary mask as ``[[x, y], ...]`` polygons in display pixels (simplified)."""
    found, _ = cv2.findContours(np.asarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in found:
        if len(c) < 3:
            continue
        eps = 0.5
        while len(c) > max_points:  # keep the JSON small; a contour of a 3000-px lung has thousands of points
            c = cv2.approxPolyDP(c, eps, True)
            eps *= 2
        polys.append(np.round(c[:, 0, :].astype(np.float64) * scale, 1).tolist())  # plain floats: JSON-ready
    return polys


def heatmap_rgba(cam: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Jet-coloured BGRA heatmap whose alpha follows the activation, so low activation stays see-through."""
    cam = resize_to(np.clip(cam.astype(np.float32), 0.0, 1.0), shape)
    colour = cv2.applyColorMap(np.round(cam * 255).astype(np.uint8), cv2.COLORMAP_JET)
    alpha = np.round(np.clip(cam * 1.5, 0.0, 1.0) * 220).astype(np.uint8)
    return np.dstack([colour, alpha])


def overlay(gray: np.ndarray, masks: dict[str, np.ndarray], heat: np.ndarray | None) -> np.ndarray:
    """A self-contained BGR overlay (image, heatmap blended by its alpha, lung contours) for reports/downloads."""
    out = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR).astype(np.float32)
    if heat is not None:
        a = heat[..., 3:4].astype(np.float32) / 255.0 * 0.6
        out = out * (1 - a) + heat[..., :3].astype(np.float32) * a
    out = np.round(out).astype(np.uint8)
    thick = max(1, round(max(gray.shape) / 300))
    for name, mask in masks.items():
        m = resize_to(mask.astype(np.uint8), gray.shape, nearest=True)
        found, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, found, -1, LUNG_BGR.get(name, (0, 220, 255)), thick)
    return out
