"""Patient-level bootstrap: resample PATIENTS with replacement (all their images come along), never images.

Images of one patient are correlated; resampling images would shrink the interval and flatter the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from cxrlab.errors import InputError

DEFAULT_N_BOOT = 1000


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile bootstrap interval (``low``/``high`` are NaN without groups)."""

    value: float
    low: float = math.nan
    high: float = math.nan
    n_boot: int = 0  # bootstrap samples on which the metric was defined

    def as_dict(self) -> dict[str, float | int]:
        return {"value": self.value, "low": self.low, "high": self.high, "n_boot": self.n_boot}


def group_indices(groups: np.ndarray) -> list[np.ndarray]:
    """Row indices of each group (patient), in order of first appearance."""
    groups = np.asarray(groups)
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse)
    return np.split(order, np.cumsum(counts)[:-1])


def bootstrap_indices(groups: np.ndarray, n_boot: int, seed: int) -> list[np.ndarray]:
    """``n_boot`` row-index arrays, each the concatenated rows of patients drawn with replacement."""
    per_group = group_indices(groups)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(per_group), size=(n_boot, len(per_group)))
    return [np.concatenate([per_group[g] for g in draw]) for draw in draws]


def bootstrap(
    statistic: Callable[[np.ndarray], Mapping[str, float]],
    n: int,
    groups: np.ndarray | None,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Estimate]:
    """Point estimates and ``1 - alpha`` percentile intervals of every scalar ``statistic`` returns.

    ``statistic(idx)`` evaluates the metrics on rows ``idx`` (one call per bootstrap sample, so all metrics
    share the same resamples). A metric that is undefined on a resample (NaN, e.g. AUC of one class) is
    left out of that metric's interval; ``n_boot`` in the result says how many samples it had.
    """
    if groups is not None and len(groups) != n:
        raise InputError("bootstrap", f"{len(groups)} patient ids for {n} rows", field="patient_id")
    point = dict(statistic(np.arange(n)))
    if groups is None or n_boot <= 0:
        return {k: Estimate(float(v)) for k, v in point.items()}
    samples: dict[str, list[float]] = {k: [] for k in point}
    for idx in bootstrap_indices(np.asarray(groups), n_boot, seed):
        for k, v in statistic(idx).items():
            if k in samples and v is not None and np.isfinite(v):
                samples[k].append(float(v))
    out = {}
    for k, v in point.items():
        vals = np.asarray(samples[k])
        if len(vals) < max(10, n_boot // 10):  # too few defined resamples for a meaningful interval
            out[k] = Estimate(float(v), n_boot=len(vals))
        else:
            lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
            out[k] = Estimate(float(v), float(lo), float(hi), len(vals))
    return out
