"""Fit the scoring parameters of a pipeline: the zone-count threshold on validation images and the Brixia
cut-points on BrixIA-scored training images (definitions in :mod:`cxrlab.severity.scores`); and the disease
mask threshold of Stage II on validation images (:mod:`cxrlab.anatomy.threshold`)."""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np
import pandas as pd

from cxrlab.anatomy.threshold import CANDIDATES, choose_threshold, dice_at_thresholds, threshold_scores
from cxrlab.data import schema
from cxrlab.errors import CxrlabError, InputError
from cxrlab.io import read_image
from cxrlab.severity.config import ScoringParams
from cxrlab.severity.pipeline import SeverityPipeline, _truth_disease
from cxrlab.severity.reference import reference_scores
from cxrlab.severity.scores import fit_brixia_cutpoints, fit_zone_threshold

ZONE_FRACTION_COLUMNS = [f"pred_zone_involvement_{z}" for z in schema.BRIXIA_ZONES]


def brixia_columns(prefix: str = "brixia_") -> list[str]:
    return [f"{prefix}{z}" for z in schema.BRIXIA_ZONES]


def _predicted_zones(pipe: SeverityPipeline, df: pd.DataFrame, on_batch) -> pd.DataFrame:
    pred = pipe.predict_manifest(df, on_batch=on_batch)
    if "error" in pred:
        pred = pred[pred["error"].isna()]
    return pred


def fit_scoring(
    pipe: SeverityPipeline,
    val_rows: pd.DataFrame,
    brixia_rows: pd.DataFrame | None = None,
    *,
    zone_strategy: Literal["equal_area", "equal_height"] = "equal_area",
    zone_reference: Literal["mask", "brixia"] = "mask",
    brixia_prefix: str = "brixia_",
    on_batch: Callable[[int, int], None] | None = None,
) -> ScoringParams:
    """Return fitted ``ScoringParams``.

    - Zone threshold: on ``val_rows``; the reference "zone affected" is the ground-truth disease mask's zone
      involvement > 0 (``zone_reference="mask"``) or the reader's zone score > 0 (``"brixia"``).
    - Brixia cut-points: on ``brixia_rows`` (training images with all six ``<prefix>A..F`` scores); when there
      are none the default cut-points stay and ``fitted_on`` says so.
    """
    pipe = pipe.with_scoring(ScoringParams(zone_strategy=zone_strategy))
    fitted: dict = {}
    threshold = pipe.scoring.zone_threshold
    pred = _predicted_zones(pipe, val_rows, on_batch)
    if zone_reference == "mask":
        ref = reference_scores(val_rows, zone_strategy)
        ref_cols = [f"ref_zone_involvement_{z}" for z in schema.BRIXIA_ZONES]
        if ref.empty or ref_cols[0] not in ref:
            raise InputError("zone threshold", "no validation image has ground-truth lung and disease masks")
        both = pred.merge(ref[[schema.IMAGE, *ref_cols]], on=schema.IMAGE)
        affected = np.where(np.isnan(both[ref_cols].to_numpy(float)), np.nan, both[ref_cols].to_numpy(float) > 0)
    else:
        cols = brixia_columns(brixia_prefix)
        missing = [c for c in cols if c not in val_rows]
        if missing:
            raise InputError("zone threshold", f"validation rows lack Brixia columns {missing}")
        both = pred.merge(val_rows[[schema.IMAGE, *cols]], on=schema.IMAGE).dropna(subset=cols)
        affected = (both[cols].to_numpy(float) > 0).astype(float)
    if len(both):
        threshold = fit_zone_threshold(both[ZONE_FRACTION_COLUMNS].to_numpy(float), affected)
        fitted["zone_threshold"] = {"images": int(len(both)), "reference": zone_reference, "split": "val"}
    else:
        fitted["zone_threshold"] = "default (no validation image could be scored)"

    cuts = pipe.scoring.brixia_cutpoints
    cols = brixia_columns(brixia_prefix)
    if brixia_rows is not None and all(c in brixia_rows for c in cols):
        scored = brixia_rows.dropna(subset=cols)
        if len(scored):
            pred_b = _predicted_zones(pipe, scored, on_batch).merge(scored[[schema.IMAGE, *cols]], on=schema.IMAGE)
            if len(pred_b):
                cuts = fit_brixia_cutpoints(pred_b[ZONE_FRACTION_COLUMNS].to_numpy(float), pred_b[cols].to_numpy(float))
                fitted["brixia_cutpoints"] = {"images": int(len(pred_b)), "columns": cols, "split": "train"}
    fitted.setdefault("brixia_cutpoints", "default (no Brixia-scored training image)")
    return ScoringParams(zone_strategy=zone_strategy, zone_threshold=threshold, brixia_cutpoints=cuts,
                         fitted_on=fitted)


def fit_disease_threshold(pipe: SeverityPipeline, val_rows: pd.DataFrame, candidates=CANDIDATES, batch_size: int = 8,
                          on_batch: Callable[[int, int], None] | None = None) -> dict:
    """Choose Stage II's mask threshold on validation images with a reference disease mask (an empty one for a
    clear film): every candidate cut of the disease probabilities, inside Stage I's predicted lungs as the
    pipeline scores them, is scored by per-image Dice, averaged over the films with disease and over the clear
    films (empty reference), and the two means averaged — as the severity checkpoint is chosen. Returns
    :func:`cxrlab.anatomy.threshold.choose_threshold`'s record plus what it was fitted on."""
    rows = val_rows[val_rows[schema.MASK_DISEASE].map(lambda v: isinstance(v, str) and bool(v.strip()))]
    rows = rows.reset_index(drop=True)
    if rows.empty:
        raise InputError("disease threshold", "no validation image has a reference disease mask")
    lung_stage, disease_stage = pipe._stages
    dice, groups = [], []
    n_batches = (len(rows) + batch_size - 1) // batch_size
    for b in range(n_batches):
        chunk = rows.iloc[b * batch_size:(b + 1) * batch_size]
        images, kept = [], []
        for _, row in chunk.iterrows():
            try:
                images.append(read_image(row[schema.IMAGE])[0])
                kept.append(row)
            except CxrlabError:
                continue  # an unreadable film is left out of the fit, as it is of the scoring
        if images:
            lungs = lung_stage.predict_batch(images, batch_size=len(images), lungs_only=True)
            lung_inputs = [m[schema.KEY_LUNG_MASK] for m in lungs] if disease_stage.in_channels == 2 else None
            probs = disease_stage.probabilities(images, lung_inputs, channels=[schema.MASK_DISEASE])
            for row, image, lung, prob in zip(kept, images, lungs, probs):
                truth = _truth_disease(row, image.shape)
                if truth is None:
                    continue
                dice.append(dice_at_thresholds(prob[0], truth, candidates, region=lung[schema.KEY_LUNG_MASK]))
                groups.append("disease" if truth.any() else "clear")
        if on_batch:
            on_batch(b + 1, n_batches)
    if not dice:
        raise InputError("disease threshold", "no validation image could be scored against its reference mask")
    choice = choose_threshold(threshold_scores(np.array(dice), groups), disease_stage.config.threshold, candidates)
    counts = {g: groups.count(g) for g in sorted(set(groups))}
    return {**choice, "fitted_on": {"split": "val", "images": len(dice), "groups": counts,
                                    "rule": "mean over disease / clear films of the mean per-image Dice inside "
                                            "the predicted lungs; the recipe's cut unless another beats it by "
                                            "min_gain"}}
