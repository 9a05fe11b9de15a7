"""Input checks shared by the metric functions: equal lengths, finite values, known labels."""

from __future__ import annotations

import numpy as np

from cxrlab.errors import InputError


def as_1d(name: str, values, *, dtype=float) -> np.ndarray:
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim != 1:
        raise InputError("metrics", f"expected a 1-D array, got shape {arr.shape}", field=name)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError("metrics", f"{int((~np.isfinite(arr)).sum())} non-finite value(s)", field=name)
    return arr


def same_length(**arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise InputError("metrics", f"arrays differ in length: {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise InputError("metrics", "no rows to evaluate")
    return n


def binary_labels(name: str, y) -> np.ndarray:
    y = as_1d(name, y)
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise InputError("metrics", f"binary labels must be 0/1, got {sorted(set(y[bad].tolist()))[:5]}", field=name)
    return y.astype(int)


def probabilities(name: str, p) -> np.ndarray:
    p = as_1d(name, p)
    if p.size and (p.min() < 0 or p.max() > 1):
        raise InputError("metrics", f"probabilities must lie in [0, 1] (range {p.min():.3g}..{p.max():.3g})",
                         field=name)
    return p


def safe_div(num: float, den: float) -> float:
    """Ratio, NaN when the denominator is zero (undefined, not zero: e.g. PPV with no positive calls)."""
    return float(num) / float(den) if den else float("nan")
