"""Where patches go: centres drawn from lung pixels, windows clamped to the image.

The patch-by-patch paper's published code drew a centre's row and column independently (each from the rows
and columns the lungs touch), so a centre could land between or beside the lungs. Here a centre is one lung
*pixel*, chosen uniformly among all lung pixels, so it is inside the mask by construction; the P×P window
around it is then shifted (not shrunk) to lie inside the image, so every patch has the same size. Near an
edge the centre is therefore off the window's middle but always inside the window.

>>> rng = np.random.default_rng(0)
>>> centres = sample_lung_centres(lung_mask, k=100, rng=rng)       # (K, 2) rows, cols; all in the mask
>>> corners = clamp_windows(centres, patch_size=224, shape=lung_mask.shape)   # (K, 2) top-left corners
"""

from __future__ import annotations

import numpy as np

from cxrlab.errors import ConfigError, InputError


def sample_lung_centres(mask: np.ndarray, k: int, rng: np.random.Generator, source: object = "lung mask") -> np.ndarray:
    """``k`` patch centres ``(row, col)`` (int64, shape ``(k, 2)``), each a pixel where ``mask`` is non-zero.

    Drawn with replacement, uniformly over lung pixels: one flat index per centre, so row and column come from
    the same pixel (never independent draws). An empty mask is an ``InputError`` naming ``source``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise InputError(source, f"a lung mask must be 2-D (H×W), got shape {mask.shape}")
    if k < 1:
        raise ConfigError(f"patch count must be at least 1, got {k}")
    lung = np.flatnonzero(mask.ravel())
    if lung.size == 0:
        raise InputError(source, "lung mask is empty: no pixel to centre a patch on")
    picked = lung[rng.integers(0, lung.size, size=k)]
    return np.stack(np.unravel_index(picked, mask.shape), axis=1).astype(np.int64)


def clamp_windows(centres: np.ndarray, patch_size: int, shape: tuple[int, int]) -> np.ndarray:
    """Top-left corners ``(row, col)`` of ``patch_size``-square windows centred on ``centres``, shifted to lie
    inside an image of ``shape`` (H, W). The window covers ``[c - P//2, c - P//2 + P)`` before clamping."""
    h, w = int(shape[0]), int(shape[1])
    if patch_size < 1 or patch_size > min(h, w):
        raise ConfigError(f"patch size {patch_size} does not fit an image of {h}×{w}; "
                          "use a smaller patch or a larger canvas")
    corners = np.asarray(centres, dtype=np.int64) - patch_size // 2
    upper = np.array([h - patch_size, w - patch_size], dtype=np.int64)
    return np.clip(corners, 0, upper)
