"""Images that are not chest radiographs, to measure the out-of-distribution check (never to fit it).

Natural and scientific images shipped inside scikit-image (no download), each also as crops and flips, plus
generated pictures that share a radiograph's grey-level statistics but none of its anatomy (smooth noise,
gradients, geometric shapes, printed text).
"""

from __future__ import annotations

import cv2
import numpy as np

SKIMAGE_NAMES = ("astronaut", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock", "coffee",
                 "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry",
                 "logo", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text")


def _grey(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr[..., :3].astype(np.uint8), cv2.COLOR_RGB2GRAY)
    arr = arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def skimage_images() -> list[tuple[str, np.ndarray]]:
    """The scikit-image sample pictures available offline, grey float32 [0, 1]."""
    try:
        from skimage import data
    except ImportError:  # pragma: no cover - scikit-image is a dependency
        return []
    out = []
    for name in SKIMAGE_NAMES:
        try:
            out.append((name, _grey(getattr(data, name)())))
        except Exception:  # noqa: BLE001 - a sample needing a download is simply not used offline
            continue
    return out


def _variants(name: str, image: np.ndarray, rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    h, w = image.shape
    out = [(name, image), (f"{name}-flip", image[:, ::-1].copy())]
    for k in range(2):
        ch, cw = int(h * rng.uniform(0.5, 0.8)), int(w * rng.uniform(0.5, 0.8))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        out.append((f"{name}-crop{k}", np.ascontiguousarray(image[y:y + ch, x:x + cw])))
    return out


def synthetic_images(n: int, size: int = 256, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """``n`` generated non-chest pictures (four kinds in turn)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:  # smooth random field
            img = cv2.resize(rng.standard_normal((8, 8)).astype(np.float32), (size, size),
                             interpolation=cv2.INTER_CUBIC)
        elif kind == 1:  # linear gradient at a random angle plus grain
            a = rng.uniform(0, np.pi)
            yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
            img = np.cos(a) * xx + np.sin(a) * yy + 0.05 * rng.standard_normal((size, size)).astype(np.float32)
        elif kind == 2:  # random shapes
            img = np.full((size, size), rng.uniform(0, 0.5), np.float32)
            for _ in range(rng.integers(3, 9)):
                c = tuple(int(v) for v in rng.integers(0, size, 2))
                if rng.random() < 0.5:
                    cv2.circle(img, c, int(rng.integers(5, size // 3)), float(rng.uniform(0, 1)), -1)
                else:
                    c2 = tuple(int(v) for v in rng.integers(0, size, 2))
                    cv2.rectangle(img, c, c2, float(rng.uniform(0, 1)), -1)
        else:  # a printed page
            page = np.full((size, size), 242, np.uint8)  # OpenCV prints on 8-bit images only
            for line in range(int(rng.integers(6, 14))):
                words = " ".join("".join(chr(int(c)) for c in rng.integers(97, 123, rng.integers(2, 8)))
                                 for _ in range(5))
                cv2.putText(page, words, (8, 20 + line * 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 25, 1, cv2.LINE_AA)
            img = page.astype(np.float32)
        out.append((f"synthetic-{['field', 'gradient', 'shapes', 'page'][kind]}-{i}", _grey(img)))
    return out


def nonchest_images(n_synthetic: int = 40, size: int = 256, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """scikit-image pictures with crops and flips, and ``n_synthetic`` generated ones: (name, image) pairs."""
    rng = np.random.default_rng(seed)
    out = []
    for name, image in skimage_images():
        out.extend(_variants(name, image, rng))
    return out + synthetic_images(n_synthetic, size, seed)
