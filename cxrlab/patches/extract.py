"""Cutting patches: the lung-masked image on an S×S canvas, and K P×P windows taken from it in one indexing op.

The patch paper resizes the image to 1024×1024 (no aspect-ratio padding, as published), upsamples the lung
mask to the same grid with nearest-neighbour interpolation (a mask stays binary), zeroes everything outside
the lungs, and cuts 224-px patches whose centres are lung pixels. :class:`PatchSampler` holds those three
numbers (defaults S=1024, P=224, K=100 as at inference in the paper).

>>> sampler = PatchSampler(canvas_size=1024, patch_size=224, count=100)
>>> patches = sampler(image, lung_mask, np.random.default_rng(0))
>>> patches.images.shape        # (100, 1, 224, 224)
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from cxrlab.errors import ConfigError, InputError
from cxrlab.patches.sampling import clamp_windows, sample_lung_centres

# the published setting (Oh, Park & Ye 2020): 1024-px canvas, 224-px patches, 100 patches at test time
CANVAS_SIZE = 1024
PATCH_SIZE = 224
PATCH_COUNT = 100


def masked_canvas(image: np.ndarray, lung_mask: np.ndarray, size: int = CANVAS_SIZE,
                  source: object = "image") -> tuple[np.ndarray, np.ndarray]:
    """``(canvas, canvas_mask)``: ``image`` (H×W or C×H×W) resized to ``size``×``size`` (float32, C×S×S) with
    pixels outside the lungs set to 0, and the lung mask on the same grid (uint8 0/1, S×S)."""
    image = np.asarray(image, dtype=np.float32)
    mask = np.asarray(lung_mask)
    planes = image[None] if image.ndim == 2 else image
    if planes.ndim != 3 or mask.shape != planes.shape[1:]:
        raise InputError(source, f"lung mask {mask.shape} does not match image {image.shape}")
    # cv2 resizes H×W×C; INTER_AREA when shrinking (no aliasing), linear when enlarging
    hw = planes.shape[1:]
    interp = cv2.INTER_AREA if size < min(hw) else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(planes.transpose(1, 2, 0)), (size, size), interpolation=interp)
    resized = resized.reshape(size, size, -1).transpose(2, 0, 1)
    canvas_mask = cv2.resize((mask > 0).astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    return (resized * canvas_mask[None]).astype(np.float32), canvas_mask


def _window_index(corners, patch_size: int):
    """Row and column index grids ``(..., K, P)`` for windows with top-left ``corners`` ``(..., K, 2)``."""
    if isinstance(corners, torch.Tensor):
        offsets = torch.arange(patch_size, device=corners.device)
    else:
        corners, offsets = np.asarray(corners, dtype=np.int64), np.arange(patch_size)
    return corners[..., 0, None] + offsets, corners[..., 1, None] + offsets


def extract_patches_batch(canvases, corners, patch_size: int):
    """Patches ``(B, K, C, P, P)`` from canvases ``(B, C, H, W)`` at corners ``(B, K, 2)`` (numpy or torch, the
    same type back): one advanced-indexing gather, no Python loop over patches."""
    rows, cols = _window_index(corners, patch_size)                    # (B, K, P) each
    b = rows.shape[0]
    batch = (torch.arange(b, device=rows.device) if isinstance(rows, torch.Tensor) else np.arange(b))
    # advanced indices split by the channel slice: numpy and torch put their broadcast dims (B, K, P, P) first
    out = canvases[batch[:, None, None, None], :, rows[:, :, :, None], cols[:, :, None, :]]
    return out.permute(0, 1, 4, 2, 3) if isinstance(out, torch.Tensor) else out.transpose(0, 1, 4, 2, 3)


def extract_patches(canvas, corners, patch_size: int):
    """Patches ``(K, C, P, P)`` from one canvas ``(C, H, W)`` (or ``(K, P, P)`` from ``(H, W)``)."""
    planar = canvas.ndim == 2
    stacked = canvas[None, None] if planar else canvas[None]
    out = extract_patches_batch(stacked, corners[None], patch_size)[0]
    return out[:, 0] if planar else out


@dataclass
class Patches:
    """K patches of one image and where they came from (everything needed to map per-patch maps back)."""

    images: np.ndarray      # (K, C, P, P) float32
    corners: np.ndarray     # (K, 2) top-left (row, col) on the canvas
    centres: np.ndarray     # (K, 2) the lung pixel each patch was drawn around
    canvas_shape: tuple[int, int]


@dataclass
class PatchSampler:
    """Masked canvas + K random lung-centred patches: ``sampler(image, lung_mask, rng) -> Patches``.

    Random patches per call (a training step draws fresh ones); pass ``count`` to override K for one call.
    """

    canvas_size: int = CANVAS_SIZE
    patch_size: int = PATCH_SIZE
    count: int = PATCH_COUNT

    def __post_init__(self) -> None:
        if not 1 <= self.patch_size <= self.canvas_size:
            raise ConfigError(f"patch size must be between 1 and the canvas size {self.canvas_size}, "
                              f"got {self.patch_size}")
        if self.count < 1:
            raise ConfigError(f"patch count must be at least 1, got {self.count}")

    def __call__(self, image: np.ndarray, lung_mask: np.ndarray, rng: np.random.Generator,
                 count: int | None = None, source: object = "image") -> Patches:
        canvas, canvas_mask = masked_canvas(image, lung_mask, self.canvas_size, source)
        centres = sample_lung_centres(canvas_mask, count or self.count, rng, source)
        corners = clamp_windows(centres, self.patch_size, canvas_mask.shape)
        return Patches(extract_patches(canvas, corners, self.patch_size), corners, centres, canvas_mask.shape)
