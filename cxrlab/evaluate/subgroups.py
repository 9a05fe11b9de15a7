"""Subgroup tables: any metric by any column (sex, view, source dataset, COVID status...) or binned column
(age band), with counts, bootstrap CIs, and a warning on subgroups too small to report."""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from cxrlab.errors import InputError

log = logging.getLogger(__name__)

AGE_BANDS = (0, 18, 40, 60, 80, 200)
MIN_PATIENTS = 20  # below this a subgroup's interval is too wide to support any claim


def bin_column(values: pd.Series, edges: Sequence[float], labels: Sequence[str] | None = None) -> pd.Series:
    """Left-closed bins ``[e_i, e_{i+1})`` labelled ``"a-b"`` (or ``labels``); missing values stay missing."""
    edges = list(edges)
    if labels is None:
        labels = [f"{edges[i]:g}-{edges[i + 1]:g}" for i in range(len(edges) - 1)]
    numeric = pd.to_numeric(values, errors="coerce")
    return pd.cut(numeric, bins=edges, labels=list(labels), right=False).astype(object)


def subgroup_table(
    df: pd.DataFrame,
    by: str,
    metric: Callable[[pd.DataFrame], dict],
    *,
    bins: Sequence[float] | None = None,
    patient_column: str = "patient_id",
    min_patients: int = MIN_PATIENTS,
    keys: Sequence[str] | None = None,
) -> list[dict]:
    """One row per level of ``by`` (binned with ``bins`` when given; missing values form level "missing").

    ``metric(sub_df)`` returns a result of the metric functions (``{"metrics": {name: estimate}}``); ``keys``
    selects which metrics go in the table. Each row: level, n_images, n_patients, the metrics, and
    ``warning`` (empty, or why the row should not be trusted).
    """
    if by not in df.columns:
        raise InputError("subgroups", f"no column {by!r} (have: {', '.join(map(str, df.columns))})", field=by)
    column = bin_column(df[by], bins) if bins is not None else df[by].astype(object)
    column = column.where(column.notna(), "missing").astype(str)
    rows = []
    for level in sorted(column.unique()):
        sub = df[column == level]
        n_pat = int(sub[patient_column].nunique())
        row: dict = {"column": by, "level": level, "n_images": int(len(sub)), "n_patients": n_pat, "warning": ""}
        try:
            result = metric(sub)
        except InputError as exc:  # e.g. a subgroup with a single class
            row["warning"] = f"not computable: {exc.reason}"
            rows.append(row)
            continue
        metrics = result.get("metrics", {})
        for k in keys or metrics:
            if k in metrics:
                row[k] = metrics[k]
        if n_pat < min_patients:
            row["warning"] = f"too small to report: {n_pat} patients < {min_patients}"
        elif any(not np.isfinite(row[k]["value"]) for k in (keys or metrics) if k in row):
            row["warning"] = "a metric is undefined in this subgroup (one class only?)"
        if row["warning"]:
            log.warning("subgroup %s=%s: %s", by, level, row["warning"])
        rows.append(row)
    return rows
