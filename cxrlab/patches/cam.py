"""Probabilistic patch Grad-CAM: per-patch heatmaps put back where their patches came from, averaged per pixel.

Following the patch paper, patch k's map for class c is weighted by the patch's probability of c (a patch
that barely believes in c contributes little), summed onto the canvas at the patch's window, and divided by
how many patches covered each pixel (count-normalised, so a pixel covered by many patches is not brighter
just for that). Pixels no patch covered are 0. The result lives on the S×S canvas of
:func:`cxrlab.patches.extract.masked_canvas`, like the lung mask there, so HCS can be computed against it.

>>> heat = patch_maps_to_canvas(maps, patches.corners, patches.canvas_shape, weights=probs[:, c])
>>> heat, probs = probabilistic_patch_cam(model, torch.from_numpy(patches.images), patches.corners,
...                                       patches.canvas_shape, target_class=c, target_layers=layers)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from cxrlab.errors import ConfigError
from cxrlab.patches.extract import _window_index


def patch_maps_to_canvas(maps: np.ndarray, corners: np.ndarray, canvas_shape: tuple[int, int],
                         weights: np.ndarray | None = None) -> np.ndarray:
    """``(H, W)`` float32: Σ_k w_k·map_k over each pixel's covering patches, divided by the number of them.

    ``maps`` is ``(K, P, P)``, ``corners`` ``(K, 2)`` top-left corners on the canvas, ``weights`` ``(K,)``
    (default 1: a plain average of the maps)."""
    maps = np.asarray(maps, dtype=np.float64)
    corners = np.asarray(corners, dtype=np.int64)
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2] or len(corners) != len(maps):
        raise ConfigError(f"need (K, P, P) maps and (K, 2) corners, got {maps.shape} and {corners.shape}")
    h, w = int(canvas_shape[0]), int(canvas_shape[1])
    k, p = maps.shape[0], maps.shape[1]
    wk = np.ones(k) if weights is None else np.asarray(weights, dtype=np.float64).reshape(k)
    rows, cols = _window_index(corners, p)                              # (K, P) each
    flat = (rows[:, :, None] * w + cols[:, None, :]).ravel()           # canvas pixel of every patch pixel
    total = np.bincount(flat, weights=(maps * wk[:, None, None]).ravel(), minlength=h * w)
    count = np.bincount(flat, minlength=h * w)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0).reshape(h, w).astype(np.float32)


def probabilistic_patch_cam(model: nn.Module, patches: torch.Tensor, corners: np.ndarray,
                            canvas_shape: tuple[int, int], target_class: int,
                            target_layers: Sequence[nn.Module], method: str = "gradcam",
                            rescale: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(heat (H, W), patch probabilities (K, C))`` for a model returning ``(K, C)`` logits on ``patches``
    ``(K, C_in, P, P)``: the CAM of ``target_class`` on every patch, weighted by the patch's softmax probability
    of that class and mapped to the canvas. ``rescale`` min-max scales the result to [0, 1] like the other
    cxrlab heatmaps (HCS thresholds are relative to the map's peak)."""
    from cxrlab.explain.cams import compute_cam
    from cxrlab.explain.heatmap import OutputTarget, _logits, class_probabilities
    from cxrlab.explain.heatmap import rescale as rescale_maps

    probs = class_probabilities(_logits(model, patches))
    if not 0 <= target_class < probs.shape[1]:
        raise ConfigError(f"target class {target_class} out of range for {probs.shape[1]} classes")
    maps = compute_cam(model, patches, method, target_layers, [OutputTarget(target_class)] * len(patches))
    heat = patch_maps_to_canvas(maps, corners, canvas_shape, probs[:, target_class])
    return (rescale_maps(heat[None])[0] if rescale else heat), probs
