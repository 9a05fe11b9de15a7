"""Which lung output a run gives films of an unseen hospital by default, and the rule that chooses it.

A lung run with annotation conventions has several lung outputs: the shared channels (trained on every source)
and one pair of channels per convention. Which one generalizes best to a hospital none of them came from is an
empirical question, answered by leaving each source out in turn (``bench/segmentation.py loso``) and recorded in
``<run>/default_output.json``; ``LungSegmenter.from_run`` then uses it unless told otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.errors import InputError
from cxrlab.utils import atomic_write_json

DEFAULT_OUTPUT_FILE = "default_output.json"
RUN_DEFAULT = "run-default"  # from_run's convention: the run's recorded choice, else the shared channels
SHARED = "shared"            # the shared lung channels, trained on every source


def run_default_convention(run_dir: str | Path) -> str | None:
    """The convention recorded in ``<run>/default_output.json`` (None = the shared channels, also when the run
    has no such file)."""
    path = Path(run_dir) / DEFAULT_OUTPUT_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable default lung output ({exc})") from None
    if not isinstance(data, dict) or not (data.get("convention") is None or isinstance(data["convention"], str)):
        raise InputError(path, "'convention' must be a convention name or null (the shared channels)",
                         field="convention")
    value = data.get("convention")
    return None if value in (None, SHARED) else value


def write_default_output(run_dir: str | Path, convention: str | None, evidence: dict[str, Any]) -> Path:
    """Record which lung output the run gives by default (``convention`` None = shared), with the evidence
    it was chosen on; ``LungSegmenter.from_run`` and everything built on it use it from then on."""
    from cxrlab.anatomy.predict import LungSegmenter

    LungSegmenter.from_run(run_dir, convention=SHARED).use_convention(convention)  # an unknown name fails here
    path = Path(run_dir) / DEFAULT_OUTPUT_FILE
    atomic_write_json(path, {"convention": convention, **evidence})
    return path


#: smallest mean val-Dice gain over the shared channels that changes the default. A source's mean lung Dice on a
#: val part of 40-300 images (per-image sd ~0.05) has a 95 % CI half-width of ~0.006-0.016, so a smaller gain is
#: not evidence that one output generalizes better.
MIN_GAIN = 0.005


def choose_default_output(held_out: list[dict[str, Any]], conventions: list[str],
                          min_gain: float = MIN_GAIN) -> dict[str, Any]:
    """The default lung output from leave-one-source-out results, on the held-out sources' *val* parts.

    ``held_out``: one dict per left-out source, ``{"held_out": name, "val": {output: {"dice_mean": d}}}`` with
    output ``"shared"`` and each convention that fold's model has. Each convention is compared with the shared
    channels, paired, on the folds whose model has it (never the held-out source's own convention: that is the
    unseen-hospital case); the convention with the largest mean gain becomes the default if that gain is at
    least ``min_gain``, else the shared channels stay (``convention`` None)."""
    gains: dict[str, dict[str, Any]] = {}
    for conv in conventions:
        folds = [r for r in held_out if conv in r["val"] and SHARED in r["val"]]
        if folds:
            diffs = [r["val"][conv]["dice_mean"] - r["val"][SHARED]["dice_mean"] for r in folds]
            gains[conv] = {"mean_gain": float(np.mean(diffs)), "folds": [r["held_out"] for r in folds],
                           "gains": [float(d) for d in diffs]}
    best = max(gains, key=lambda c: gains[c]["mean_gain"]) if gains else None
    chosen = best if best is not None and gains[best]["mean_gain"] >= min_gain else None
    return {"convention": chosen, "gains_over_shared_val": gains, "min_gain": min_gain,
            "rule": f"largest mean paired val-Dice gain over the shared channels on held-out sources, if at least "
                    f"{min_gain:g}; else the shared channels"}
