"""The probability threshold a segmentation run's masks are cut at, chosen on validation images after training.

Training checkpoints are chosen at the recipe's ``threshold`` (0.5). For a small, coarse target such as disease
the per-image Dice moves with the cut: a lower one recovers faint lesions, a higher one clears false pixels on
clear lungs. ``threshold_scores`` scores candidate cuts on validation images with the same group-macro rule as
checkpoint selection (each group, e.g. disease / clear films, counts once); ``write_run_threshold`` records the
choice in ``<run>/threshold.json`` and ``LungSegmenter.from_run`` cuts at it from then on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxrlab.errors import InputError
from cxrlab.utils import atomic_write_json

THRESHOLD_FILE = "threshold.json"
#: candidate cuts: 0.10, 0.15, ..., 0.90
CANDIDATES = tuple(round(0.1 + 0.05 * k, 2) for k in range(17))
#: smallest gain in the validation score over the recipe's own cut that moves it: a smaller one is noise on a
#: few hundred validation images.
MIN_GAIN = 0.002


def run_threshold(run_dir: str | Path) -> float | None:
    """The threshold recorded in ``<run>/threshold.json``; None when the run has none (the recipe's applies)."""
    path = Path(run_dir) / THRESHOLD_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable fitted threshold ({exc})") from None
    value = data.get("threshold") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise InputError(path, f"'threshold' must be a number strictly between 0 and 1, got {value!r}",
                         field="threshold")
    return float(value)


def write_run_threshold(run_dir: str | Path, threshold: float, evidence: dict[str, Any]) -> Path:
    """Record the run's mask threshold with the evidence it was chosen on."""
    if not 0 < threshold < 1:
        raise InputError(run_dir, f"threshold must be strictly between 0 and 1, got {threshold}")
    path = Path(run_dir) / THRESHOLD_FILE
    atomic_write_json(path, {"threshold": float(threshold), **evidence})
    return path


def dice_at_thresholds(prob: np.ndarray, truth: np.ndarray, candidates: Sequence[float] = CANDIDATES,
                       region: np.ndarray | None = None) -> np.ndarray:
    """Dice of ``prob >= t`` (inside ``region`` when given) against ``truth`` for every candidate ``t``;
    1.0 where both are empty (a clear film left clear)."""
    prob = np.asarray(prob, np.float32)
    truth = np.asarray(truth, bool)
    if region is not None:
        prob = np.where(np.asarray(region, bool), prob, 0.0)
    t = np.asarray(candidates, np.float32)
    # sorted once, every cut's counts are a binary search
    inside, outside = np.sort(prob[truth]), np.sort(prob[~truth])
    tp = (len(inside) - np.searchsorted(inside, t, side="left")).astype(float)
    fp = (len(outside) - np.searchsorted(outside, t, side="left")).astype(float)
    denom = tp + fp + len(inside)  # |prediction| + |truth|
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)


def threshold_scores(dice: np.ndarray, groups: Sequence[str]) -> np.ndarray:
    """Images × candidates Dice → one score per candidate: the mean over groups of each group's mean Dice."""
    dice = np.asarray(dice, float)
    groups = np.asarray(list(groups), dtype=object)
    if dice.ndim != 2 or len(groups) != len(dice) or not len(dice):
        raise InputError("threshold fit", f"{dice.shape} Dice values for {len(groups)} images")
    return np.mean([dice[groups == g].mean(axis=0) for g in sorted(set(groups))], axis=0)


def choose_threshold(scores: np.ndarray, current: float, candidates: Sequence[float] = CANDIDATES,
                     min_gain: float = MIN_GAIN) -> dict[str, Any]:
    """The best-scoring candidate if it beats the current cut's score by ``min_gain``, else the current cut
    (ties go to the candidate nearest the current cut)."""
    candidates = np.asarray(candidates, float)
    scores = np.asarray(scores, float)
    order = np.lexsort((np.abs(candidates - current), -scores))
    best = int(order[0])
    here = np.flatnonzero(np.isclose(candidates, current))
    base = float(scores[here[0]]) if len(here) else float("nan")
    chosen = float(candidates[best]) if not np.isfinite(base) or scores[best] - base >= min_gain else float(current)
    score = base if chosen == current and np.isfinite(base) else float(scores[best])
    return {"threshold": chosen, "score": score,
            "score_at_recipe_threshold": base, "recipe_threshold": float(current), "min_gain": min_gain,
            "scores": {f"{c:.2f}": float(s) for c, s in zip(candidates, scores)}}
