"""Fit the scoring parameters of a pipeline: the zone-count threshold on validation images and the Brixia
cut-points on BrixIA-scored training images (definitions in :mod:`cxrlab.severity.scores`)."""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.errors import InputError
from cxrlab.severity.config import ScoringParams
from cxrlab.severity.pipeline import SeverityPipeline
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
