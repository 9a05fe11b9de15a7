"""Reference scores from ground-truth masks (manifest ``mask_disease`` + lung masks), by the same functions as
the predictions, so predicted and reference scores differ only by the masks."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from cxrlab.anatomy.geometry import lung_zones
from cxrlab.anatomy.postprocess import split_lungs
from cxrlab.data import schema
from cxrlab.errors import CxrlabError
from cxrlab.io import image_size, read_mask
from cxrlab.severity.scores import score_masks


def _has(row: pd.Series, column: str) -> bool:
    value = row.get(column)
    return isinstance(value, str) and value.strip() != ""


def has_reference_masks(row: pd.Series) -> bool:
    lungs = (_has(row, schema.MASK_RIGHT_LUNG) and _has(row, schema.MASK_LEFT_LUNG)) or _has(row, schema.MASK_LUNGS)
    return lungs and _has(row, schema.MASK_DISEASE)


def reference_masks(row: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(patient_right, patient_left, disease)`` of one manifest row, each at the image's size."""
    shape = image_size(row[schema.IMAGE])
    if _has(row, schema.MASK_RIGHT_LUNG) and _has(row, schema.MASK_LEFT_LUNG):
        r = read_mask(row[schema.MASK_RIGHT_LUNG], expected_shape=shape)
        l = read_mask(row[schema.MASK_LEFT_LUNG], expected_shape=shape)
    else:
        r, l = split_lungs(read_mask(row[schema.MASK_LUNGS], expected_shape=shape))
    d = read_mask(row[schema.MASK_DISEASE], expected_shape=shape)
    return r, l, d


def reference_scores(df: pd.DataFrame, zone_strategy: str = "equal_area",
                     on_item: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Per row with reference masks: ``image`` + ``ref_<score>`` for every score of ``score_masks``.

    Rows without masks, or whose masks cannot be scored, are left out (their reason in ``ref_error``).
    """
    rows = []
    n = len(df)
    for i, (_, row) in enumerate(df.iterrows()):
        out: dict = {schema.IMAGE: row[schema.IMAGE]}
        if has_reference_masks(row):
            try:
                r, l, d = reference_masks(row)
                rec = score_masks(d, r, l, lung_zones(r, l, zone_strategy), source=row[schema.IMAGE])
                out.update({f"ref_{k}": v for k, v in rec.items()})
                out["ref_error"] = None
            except CxrlabError as exc:
                out["ref_error"] = str(exc)
            rows.append(out)
        if on_item:
            on_item(i + 1, n)
    return pd.DataFrame(rows)
