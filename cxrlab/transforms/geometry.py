"""Geometric dictionary transforms: the image and every mask move together.

Images use linear (area when shrinking) interpolation, masks nearest neighbour so they stay binary.
Each transform records its parameters in ``meta['applied']``; ``undo_resize_pad`` maps a mask predicted on
the resized canvas back onto the original image grid.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from cxrlab.data import schema
from cxrlab.errors import ConfigError, InputError
from cxrlab.transforms.base import TRANSFORMS, Sample, Transform, check_masks, mask_keys, record, source_of

_ZONE_MIRROR = {"A": "D", "B": "E", "C": "F", "D": "A", "E": "B", "F": "C"}


def mirrored_label_name(name: str) -> str:
    """The label a mirror image turns ``name`` into: ``*right*`` ↔ ``*left*`` and Brixia zones
    ``*_A..C`` ↔ ``*_D..F`` (A-C are the patient's right lung). Other names map to themselves."""
    if "right" in name:
        return name.replace("right", "left")
    if "left" in name:
        return name.replace("left", "right")
    head, _, zone = name.rpartition("_")
    if head and zone in _ZONE_MIRROR:
        return f"{head}_{_ZONE_MIRROR[zone]}"
    return name


def _hwc(a: np.ndarray) -> np.ndarray:
    return a if a.ndim == 2 else np.ascontiguousarray(np.moveaxis(a, 0, -1))


def _chw(a: np.ndarray, like: np.ndarray) -> np.ndarray:
    if like.ndim == 2:
        return a
    if a.ndim == 2:  # cv2 drops a trailing singleton channel
        a = a[..., None]
    return np.ascontiguousarray(np.moveaxis(a, -1, 0))


def _resize(a: np.ndarray, size_hw: tuple[int, int], is_mask: bool) -> np.ndarray:
    h, w = size_hw
    if is_mask:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if h * w < a.shape[-2] * a.shape[-1] else cv2.INTER_LINEAR
    return _chw(cv2.resize(_hwc(a), (w, h), interpolation=interp), a)


def _warp(a: np.ndarray, matrix: np.ndarray, size_hw: tuple[int, int], is_mask: bool) -> np.ndarray:
    h, w = size_hw
    interp = cv2.INTER_NEAREST if is_mask else cv2.INTER_LINEAR
    out = cv2.warpAffine(_hwc(a), matrix, (w, h), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return _chw(out, a)


def _apply_spatial(sample: Sample, fn) -> Sample:
    check_masks(sample)
    sample[schema.KEY_IMAGE] = fn(np.asarray(sample[schema.KEY_IMAGE]), False)
    for key in mask_keys(sample):
        sample[key] = fn(np.asarray(sample[key]), True)
    return sample


@TRANSFORMS.register("resize")
class Resized(Transform):
    """Resize to ``(height, width)`` exactly (aspect not kept; see ``ResizePadd``)."""

    def __init__(self, size: int | tuple[int, int]):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def apply(self, sample: Sample, rng) -> Sample:
        h0, w0 = sample[schema.KEY_IMAGE].shape[-2:]
        _apply_spatial(sample, lambda a, m: _resize(a, self.size, m))
        record(sample, "resize", orig_shape=(int(h0), int(w0)), size=self.size)
        return sample


@TRANSFORMS.register("resize_pad")
class ResizePadd(Transform):
    """Scale the longest side to ``size`` keeping aspect, then pad (zeros, centred) to ``size × size``."""

    def __init__(self, size: int, upscale: bool = True):
        if size < 8:
            raise ConfigError(f"resize_pad size must be >= 8, got {size}")
        self.size = int(size)
        self.upscale = upscale

    def params(self, shape_hw: tuple[int, int]) -> dict[str, Any]:
        h0, w0 = shape_hw
        scale = self.size / max(h0, w0)
        if not self.upscale:
            scale = min(scale, 1.0)
        h, w = max(1, round(h0 * scale)), max(1, round(w0 * scale))
        top, left = (self.size - h) // 2, (self.size - w) // 2
        return {"orig_shape": (int(h0), int(w0)), "resized": (h, w), "pad_top": top, "pad_left": left,
                "size": self.size}

    def apply(self, sample: Sample, rng) -> Sample:
        p = self.params(sample[schema.KEY_IMAGE].shape[-2:])
        h, w = p["resized"]

        def fn(a: np.ndarray, is_mask: bool) -> np.ndarray:
            r = _resize(a, (h, w), is_mask)
            out = np.zeros((*a.shape[:-2], self.size, self.size), dtype=a.dtype)
            out[..., p["pad_top"]:p["pad_top"] + h, p["pad_left"]:p["pad_left"] + w] = r
            return out

        _apply_spatial(sample, fn)
        record(sample, "resize_pad", **p)
        return sample


def undo_resize_pad(array: np.ndarray, params: dict[str, Any], is_mask: bool = True) -> np.ndarray:
    """Map an array on the ``ResizePadd`` canvas (..., size, size) back to the original image grid."""
    h, w = params["resized"]
    top, left = params["pad_top"], params["pad_left"]
    crop = array[..., top:top + h, left:left + w]
    return _resize(np.ascontiguousarray(crop), tuple(params["orig_shape"]), is_mask)


@TRANSFORMS.register("crop_to_mask")
class CropToMaskd(Transform):
    """Crop image and masks to the bounding box of ``mask_key`` plus a margin (fraction of the box side)."""

    def __init__(self, mask_key: str = schema.KEY_LUNG_MASK, margin: float = 0.05, allow_empty: bool = False):
        if margin < 0:
            raise ConfigError(f"crop_to_mask margin must be >= 0, got {margin}")
        self.mask_key = mask_key
        self.margin = float(margin)
        self.allow_empty = allow_empty

    def apply(self, sample: Sample, rng) -> Sample:
        mask = sample.get(self.mask_key)
        if mask is None:
            raise InputError(source_of(sample), "sample has no such mask to crop to", field=self.mask_key)
        ys, xs = np.nonzero(np.asarray(mask))
        if len(ys) == 0:
            if self.allow_empty:
                return sample
            raise InputError(source_of(sample), "mask is empty: nothing to crop to", field=self.mask_key)
        H, W = mask.shape[-2:]
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        my, mx = math.ceil((y1 - y0) * self.margin), math.ceil((x1 - x0) * self.margin)
        y0, y1, x0, x1 = max(0, y0 - my), min(H, y1 + my), max(0, x0 - mx), min(W, x1 + mx)
        _apply_spatial(sample, lambda a, m: np.ascontiguousarray(a[..., y0:y1, x0:x1]))
        record(sample, "crop_to_mask", box=(int(y0), int(y1), int(x0), int(x1)), orig_shape=(int(H), int(W)))
        return sample


def hflip_sample(sample: Sample) -> Sample:
    """Mirror left-right. The patient's right lung now lies on the image's right, so by the radiological
    convention it becomes the *patient-left* structure: side-specific masks and labels are swapped."""
    _apply_spatial(sample, lambda a, m: np.ascontiguousarray(a[..., ::-1]))
    r, l = schema.KEY_RIGHT_MASK, schema.KEY_LEFT_MASK
    if r in sample or l in sample:
        sample[r], sample[l] = sample.get(l), sample.get(r)
        for key in (r, l):
            if sample[key] is None:
                del sample[key]
    labels = sample.get(schema.KEY_LABELS)
    if labels:
        sample[schema.KEY_LABELS] = {mirrored_label_name(k): v for k, v in labels.items()}
    record(sample, "hflip")
    return sample


@TRANSFORMS.register("hflip")
class HFlipd(Transform):
    """Deterministic horizontal flip (swaps patient-left/right masks and side labels)."""

    def apply(self, sample: Sample, rng) -> Sample:
        return hflip_sample(sample)


@TRANSFORMS.register("rand_hflip")
class RandHFlipd(Transform):
    """Horizontal flip with probability ``p`` (swaps patient-left/right masks and side labels)."""

    random = True

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        return hflip_sample(sample) if rng.random() < self.p else sample


@TRANSFORMS.register("rand_affine")
class RandAffined(Transform):
    """Random rotation (degrees), isotropic scale, aspect jitter and translation (fraction of the side),
    about the image centre, with probability ``p``. Output keeps the input size; outside is zero."""

    random = True

    def __init__(self, rotate: float = 10.0, scale: tuple[float, float] = (0.9, 1.1),
                 translate: float = 0.05, aspect: float = 0.0, p: float = 1.0):
        self.rotate = float(rotate)
        self.scale = tuple(scale)
        self.translate = float(translate)
        self.aspect = float(aspect)
        self.p = float(p)

    def matrix(self, shape_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        h, w = shape_hw
        angle = rng.uniform(-self.rotate, self.rotate)
        s = rng.uniform(*self.scale)
        a = math.exp(rng.uniform(-self.aspect, self.aspect))  # x/y stretch, e.g. for squashed sources
        tx, ty = rng.uniform(-self.translate, self.translate, size=2) * (w, h)
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, s)
        m[0, :] *= math.sqrt(a)
        m[1, :] /= math.sqrt(a)
        m[0, 2] += (1 - math.sqrt(a)) * w / 2 + tx
        m[1, 2] += (1 - 1 / math.sqrt(a)) * h / 2 + ty
        return m

    def apply(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.p:
            return sample
        shape = tuple(sample[schema.KEY_IMAGE].shape[-2:])
        m = self.matrix(shape, rng)
        _apply_spatial(sample, lambda arr, is_mask: _warp(arr, m, shape, is_mask))
        record(sample, "affine", matrix=m.tolist())
        return sample
