"""Dictionary-transform machinery: key selection, seeded randomness, ``Compose`` and the transform registry.

A transform is a callable ``t(sample, rng=None) -> sample`` on a sample dict (``cxrlab.data.schema`` keys).
Geometric transforms act on the image and every mask key present, so masks never drift from their image.
Random transforms draw only from the ``numpy.random.Generator`` they are handed: ``Compose(seed=...)`` owns
one, so a pipeline is reproducible from its seed alone (and a Dataset can pass a per-item generator).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from cxrlab.data import schema
from cxrlab.errors import ConfigError, InputError
from cxrlab.registry import Registry

TRANSFORMS: Registry[type] = Registry("transform")

Sample = dict[str, Any]


def mask_keys(sample: Sample) -> list[str]:
    """Every mask in the sample: the schema's mask keys plus any other ``*_mask`` array."""
    keys = [k for k in schema.MASK_KEYS if sample.get(k) is not None]
    keys += [k for k in sample if k.endswith("_mask") and k not in keys and sample[k] is not None]
    return keys


def source_of(sample: Sample) -> str:
    """The sample's file for error messages (meta image path when known)."""
    meta = sample.get(schema.KEY_META) or {}
    return str(meta.get("image", "<sample>"))


def spatial_shape(sample: Sample) -> tuple[int, int]:
    image = sample[schema.KEY_IMAGE]
    return tuple(image.shape[-2:])  # type: ignore[return-value]


def check_masks(sample: Sample) -> None:
    """Every mask must match its image's size: a mismatch is a data error, never silently resized."""
    shape = spatial_shape(sample)
    for key in mask_keys(sample):
        if tuple(sample[key].shape[-2:]) != shape:
            raise InputError(source_of(sample), f"mask size {tuple(sample[key].shape)} differs from image size "
                             f"{shape}", field=key)


def record(sample: Sample, name: str, **params: Any) -> None:
    """Append what a transform did to ``meta['applied']`` (enough to invert geometric steps)."""
    meta = sample.setdefault(schema.KEY_META, {})
    meta.setdefault("applied", []).append({"name": name, **params})


class Transform:
    """Base class: subclasses implement ``apply(sample, rng)``; ``__call__`` copies the dict first."""

    random = False

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        if schema.KEY_IMAGE not in sample:
            raise InputError("<sample>", "sample has no image", field=schema.KEY_IMAGE)
        out = dict(sample)
        if schema.KEY_META in out:
            out[schema.KEY_META] = dict(out[schema.KEY_META])
            if "applied" in out[schema.KEY_META]:
                out[schema.KEY_META]["applied"] = list(out[schema.KEY_META]["applied"])
        if self.random and rng is None:
            rng = np.random.default_rng()
        return self.apply(out, rng)

    def apply(self, sample: Sample, rng: np.random.Generator | None) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply transforms in order; random ones draw from one generator seeded by ``seed``."""

    def __init__(self, transforms: Sequence[Transform], seed: int | None = 0):
        self.transforms = list(transforms)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.random = any(t.random for t in self.transforms)

    def set_seed(self, seed: int | None) -> None:
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        rng = rng if rng is not None else self._rng
        for t in self.transforms:
            sample = t(sample, rng)
        return sample


def build_transforms(specs: Iterable[str | dict[str, Any]], seed: int | None = 0) -> Compose:
    """Build a ``Compose`` from recipe entries: ``"hflip"`` or ``{"name": "resize_pad", "size": 256}``."""
    out = []
    for spec in specs:
        if isinstance(spec, str):
            name, kwargs = spec, {}
        elif isinstance(spec, dict) and "name" in spec:
            kwargs = {k: v for k, v in spec.items() if k != "name"}
            name = spec["name"]
        else:
            raise ConfigError(f"transform spec must be a name or a mapping with 'name', got {spec!r}")
        cls = TRANSFORMS.get(name)
        try:
            out.append(cls(**kwargs))
        except TypeError as exc:
            raise ConfigError(f"transform {name!r}: {exc}") from None
    return Compose(out, seed=seed)
