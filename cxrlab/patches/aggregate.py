"""From K patch predictions to one image prediction: majority vote (the patch paper's default) or mean probability.

Input is ``(..., K, C)`` class probabilities (numpy or torch; numpy comes back), e.g. ``(B, K, C)`` for a batch.

- ``vote``: each patch votes for its most probable class; the image's scores are the vote shares (the paper's
  "percentage of predictions for each class"), which sum to 1. Ties, decided deterministically:
  a patch whose top probabilities tie votes for the lowest class index (``argmax``); an image whose top
  vote counts tie goes to the tied class with the highest mean patch probability, and if that ties too, to
  the lowest class index. Counts are compared as integers, so no floating-point rounding decides a tie.
- ``mean``: the mean of the patch probabilities; the label is its argmax (ties: lowest class index).

>>> probs, label = aggregate_patches(patch_probs, "vote")
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cxrlab.errors import ConfigError

AGGREGATIONS = ("vote", "mean")


class Aggregate(NamedTuple):
    probs: np.ndarray   # (..., C) image-level scores summing to 1
    label: np.ndarray   # (...,) int64 predicted class index


def _as_numpy(patch_probs) -> np.ndarray:
    if hasattr(patch_probs, "detach"):
        patch_probs = patch_probs.detach().cpu().numpy()
    p = np.asarray(patch_probs, dtype=np.float64)
    if p.ndim < 2 or p.shape[-2] < 1 or p.shape[-1] < 1:
        raise ConfigError(f"patch probabilities must be (..., K, C) with K, C >= 1, got shape {p.shape}")
    return p


def vote_counts(patch_probs) -> np.ndarray:
    """``(..., C)`` int64: how many of the K patches have each class as their most probable one."""
    p = _as_numpy(patch_probs)
    votes = p.argmax(axis=-1)                                   # ties within a patch: lowest class index
    return (votes[..., None] == np.arange(p.shape[-1])).sum(axis=-2).astype(np.int64)


def majority_vote(patch_probs) -> Aggregate:
    """Vote shares ``(..., C)`` and the winning class, ties broken as the module docstring says."""
    p = _as_numpy(patch_probs)
    counts = vote_counts(p)
    tied = counts == counts.max(axis=-1, keepdims=True)
    mean = p.mean(axis=-2)
    label = np.where(tied, mean, -np.inf).argmax(axis=-1)      # argmax keeps the lowest index among equals
    return Aggregate(counts / p.shape[-2], label.astype(np.int64))


def mean_probability(patch_probs) -> Aggregate:
    """Mean patch probability ``(..., C)`` and its argmax."""
    mean = _as_numpy(patch_probs).mean(axis=-2)
    return Aggregate(mean, mean.argmax(axis=-1).astype(np.int64))


def aggregate_patches(patch_probs, method: str = "vote") -> Aggregate:
    """``vote`` (default, as published) or ``mean``."""
    if method == "vote":
        return majority_vote(patch_probs)
    if method == "mean":
        return mean_probability(patch_probs)
    raise ConfigError(f"unknown patch aggregation {method!r}; known: {', '.join(AGGREGATIONS)}")
