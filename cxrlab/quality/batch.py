"""The gate over a table of images: the ``quality_*`` columns batch commands write."""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.errors import InputError
from cxrlab.io import read_image
from cxrlab.quality.gate import QualityGate

QUALITY_COLUMNS = ["quality_verdict", "quality_view", "quality_view_prob", "quality_inverted", "quality_ood_score",
                   "quality_reasons"]


def as_gate(quality: QualityGate | str | os.PathLike) -> QualityGate:
    return quality if isinstance(quality, QualityGate) else QualityGate.load(quality)


def check_frame(gate: QualityGate, df: pd.DataFrame, batch_size: int = 32,
                progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """``quality_*`` columns for every row of ``df`` (indexed like it); an unreadable image is refused."""
    rows: dict[object, dict] = {}
    index = list(df.index)
    for start in range(0, len(index), batch_size):
        chunk = index[start:start + batch_size]
        images, names, at = [], [], []
        for i in chunk:
            path = str(df.at[i, schema.IMAGE])
            try:
                images.append(read_image(path)[0])
                names.append(path)
                at.append(i)
            except InputError as exc:
                rows[i] = {"quality_verdict": "refuse", "quality_view": None, "quality_view_prob": None,
                           "quality_inverted": None, "quality_ood_score": None,
                           "quality_reasons": f"unreadable: {exc.reason}"}
        for i, result in zip(at, gate.check_many(images, names)):
            rows[i] = result.columns()
        if progress is not None:
            progress(min(start + batch_size, len(index)), len(index))
    return pd.DataFrame.from_dict(rows, orient="index").reindex(index)[QUALITY_COLUMNS]


def inverted_rows(checks: pd.DataFrame) -> pd.Series:
    """True where the gate found the film inverted (False for unreadable rows, whose flag is missing)."""
    return checks["quality_inverted"].map(lambda v: isinstance(v, (bool, np.bool_)) and bool(v)).astype(bool)
