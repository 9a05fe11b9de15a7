"""Intensity dictionary transforms (image key only; masks are untouched).

CLAHE follows the ICU paper's ``histeq=True_{cl}_{gs}`` convention (clip limit ``cl*gs*gs``, a ``gs×gs`` tile
grid) on 256 levels spanning the image's real intensity range (OpenCV's 8-bit CLAHE, whose clip limit is
relative to a 256-bin histogram, as in the paper). The published code cast a [0, 1] float image to uint8
instead of scaling it, which turns every pixel into 0 or 1; cxrlab never does that.
"""

from __future__ import annotations

import cv2
import numpy as np

from cxrlab.data import schema
from cxrlab.errors import ConfigError, InputError
from cxrlab.transforms.base import TRANSFORMS, Sample, Transform, source_of

_EPS = 1e-8


def _image(sample: Sample) -> np.ndarray:
    image = np.asarray(sample[schema.KEY_IMAGE], dtype=np.float32)
    if not np.isfinite(image).all():
        raise InputError(source_of(sample), "image has NaN or infinite values", field=schema.KEY_IMAGE)
    return image


def _first_channel_op(image: np.ndarray, fn) -> np.ndarray:
    """Intensity ops apply to the grey image; extra channels (e.g. a stacked mask) are left alone."""
    if image.ndim == 2:
        return fn(image)
    out = image.copy()
    out[0] = fn(image[0])
    return out


@TRANSFORMS.register("minmax")
class MinMaxd(Transform):
    """Scale the image linearly to [0, 1] (a constant image becomes all zeros)."""

    def apply(self, sample: Sample, rng) -> Sample:
        def fn(x: np.ndarray) -> np.ndarray:
            lo, hi = float(x.min()), float(x.max())
            return ((x - lo) / (hi - lo)).astype(np.float32) if hi - lo > _EPS else np.zeros_like(x)

        sample[schema.KEY_IMAGE] = _first_channel_op(_image(sample), fn)
        return sample


@TRANSFORMS.register("percentile")
class Percentiled(Transform):
    """Map the ``lower``..``upper`` percentiles to 0..1, clipping outside (robust to burnt-in labels)."""

    def __init__(self, lower: float = 1.0, upper: float = 99.0, clip: bool = True):
        if not 0 <= lower < upper <= 100:
            raise ConfigError(f"percentile needs 0 <= lower < upper <= 100, got {lower}, {upper}")
        self.lower, self.upper, self.clip = float(lower), float(upper), clip

    def apply(self, sample: Sample, rng) -> Sample:
        def fn(x: np.ndarray) -> np.ndarray:
            lo, hi = np.percentile(x, [self.lower, self.upper])
            y = (x - lo) / max(hi - lo, _EPS)
            return (np.clip(y, 0, 1) if self.clip else y).astype(np.float32)

        sample[schema.KEY_IMAGE] = _first_channel_op(_image(sample), fn)
        return sample


@TRANSFORMS.register("zscore")
class ZScored(Transform):
    """Subtract the mean and divide by the standard deviation, over the whole image or inside ``mask_key``."""

    def __init__(self, mask_key: str | None = None):
        self.mask_key = mask_key

    def apply(self, sample: Sample, rng) -> Sample:
        region = None
        if self.mask_key is not None:
            if sample.get(self.mask_key) is None:
                raise InputError(source_of(sample), "z-score mask missing", field=self.mask_key)
            region = np.asarray(sample[self.mask_key]).astype(bool)
            if not region.any():
                raise InputError(source_of(sample), "z-score mask is empty", field=self.mask_key)

        def fn(x: np.ndarray) -> np.ndarray:
            vals = x[region] if region is not None else x
            return ((x - vals.mean()) / max(float(vals.std()), _EPS)).astype(np.float32)

        sample[schema.KEY_IMAGE] = _first_channel_op(_image(sample), fn)
        return sample


def parse_histeq(spec: str | bool | None) -> tuple[float, int] | None:
    """``"True_{cl}_{gs}"`` → ``(cl, gs)``; ``"False"``/``False``/``None`` → no CLAHE.

    The ICU paper's convention: ``cl`` is the clip limit *per tile pixel*, OpenCV gets ``clipLimit=cl·gs·gs``
    and ``tileGridSize=(gs, gs)``. ``True_.04_8`` (the paper's example) → clipLimit 2.56; ``True_2_8`` → 128,
    which barely clips at all (close to plain adaptive equalisation)."""
    if spec is None or spec is False or str(spec).lower() == "false":
        return None
    parts = str(spec).split("_")
    if len(parts) != 3 or parts[0].lower() != "true":
        raise ConfigError(f"histeq must look like 'True_<clip>_<grid>' or 'False', got {spec!r}")
    try:
        cl, gs = float(parts[1]), int(parts[2])
    except ValueError:
        raise ConfigError(f"histeq clip must be a number and grid an integer, got {spec!r}") from None
    if cl <= 0 or gs < 1:
        raise ConfigError(f"histeq clip must be > 0 and grid >= 1, got {spec!r}")
    return cl, gs


def clahe(image: np.ndarray, clip: float, grid: int) -> np.ndarray:
    """CLAHE on the image's own intensity range: scaled (never cast) to 0..255, equalised, scaled back."""
    lo, hi = float(image.min()), float(image.max())
    if hi - lo < _EPS:
        return image.astype(np.float32)
    q = np.round((image - lo) / (hi - lo) * 255.0).astype(np.uint8)
    eq = cv2.createCLAHE(clipLimit=clip * grid * grid, tileGridSize=(grid, grid)).apply(q)
    return (eq.astype(np.float32) / 255.0 * (hi - lo) + lo).astype(np.float32)


@TRANSFORMS.register("clahe")
class CLAHEd(Transform):
    """Contrast-limited adaptive histogram equalisation; ``histeq="True_2_8"`` or ``clip=``/``grid=``."""

    def __init__(self, histeq: str | None = None, clip: float | None = None, grid: int | None = None):
        if histeq is not None:
            self.clip, self.grid = parse_histeq(histeq) or (None, None)
        elif clip is not None and grid is not None:
            self.clip, self.grid = parse_histeq(f"True_{clip}_{grid}")
        else:
            raise ConfigError("clahe needs histeq='True_<clip>_<grid>' (or 'False') or both clip and grid")
        self.enabled = self.clip is not None

    def apply(self, sample: Sample, rng) -> Sample:
        if self.enabled:
            sample[schema.KEY_IMAGE] = _first_channel_op(_image(sample), lambda x: clahe(x, self.clip, self.grid))
        return sample


@TRANSFORMS.register("unsharp")
class UnsharpMaskd(Transform):
    """Unsharp masking: ``x + amount * (x - gaussian(x, sigma))``, clipped to [0, 1] (or to the input's range
    where that is wider)."""

    def __init__(self, sigma: float = 2.0, amount: float = 1.0):
        if sigma <= 0:
            raise ConfigError(f"unsharp sigma must be > 0, got {sigma}")
        self.sigma, self.amount = float(sigma), float(amount)

    def apply(self, sample: Sample, rng) -> Sample:
        def fn(x: np.ndarray) -> np.ndarray:
            blurred = cv2.GaussianBlur(x, (0, 0), self.sigma)
            return np.clip(x + self.amount * (x - blurred), min(0.0, x.min()), max(1.0, x.max())).astype(np.float32)

        sample[schema.KEY_IMAGE] = _first_channel_op(_image(sample), fn)
        return sample


@TRANSFORMS.register("rand_gamma")
class RandGammad(Transform):
    """Random gamma ``x ** g`` with ``log g ~ U(-log_range, log_range)`` on a [0, 1] image, probability ``p``."""

    random = True

    def __init__(self, log_range: float = 0.3, p: float = 0.5):
        self.log_range, self.p = float(log_range), float(p)

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return sample
        g = float(np.exp(rng.uniform(-self.log_range, self.log_range)))
        sample[schema.KEY_IMAGE] = _first_channel_op(_image(sample), lambda x: np.clip(x, 0, 1) ** g)
        return sample
