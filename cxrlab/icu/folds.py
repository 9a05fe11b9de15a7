"""One patient-level k-fold for every arm: the primary (labelled, pre-event, filtered) rows are folded once and
each fold written as a split table (``image, patient_id, split``) that ``cxrlab train --split`` and the embedding
head both read, so every arm sees exactly the same train/val/test patients."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from cxrlab.data import schema
from cxrlab.data.manifest import Manifest
from cxrlab.data.splits import SPLIT, kfold_patients, split_patients
from cxrlab.errors import ConfigError
from cxrlab.utils import atomic_write_text
from cxrlab.recipes import Recipe


def primary_rows(recipe: Recipe, manifests: Sequence[Manifest]) -> pd.DataFrame:
    """The rows a run of ``recipe`` on ``manifests[0]`` alone would split: filtered, before the event, labelled.
    Returns the run table's frame (manifest columns) and ``attrs['data_filter']`` (what was removed)."""
    from cxrlab.train.data import build_table
    from cxrlab.train.inputs import InputPipeline
    from cxrlab.train.trainer import build_tasks

    pipeline = InputPipeline(recipe.input)
    table, report = build_table(recipe, [manifests[0]], build_tasks(recipe, pipeline), pipeline.per_image)
    df = table.df.drop(columns=[SPLIT]).reset_index(drop=True)
    df.attrs["data_filter"] = report
    return df


def make_folds(primary: pd.DataFrame, column: str, k: int = 5, seed: int = 0, val_fraction: float = 0.15
               ) -> list[pd.DataFrame]:
    """``k`` split tables over ``primary``: fold ``i`` tests its patients, and an inner patient-level split of
    the rest (``val_fraction``, stratified by ``column``) validates — the same rule as ``split.folds``."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    df = primary[[schema.IMAGE, schema.PATIENT_ID, column]].reset_index(drop=True).copy()
    df[schema.PATIENT_ID] = df[schema.PATIENT_ID].astype(str)
    fold = kfold_patients(df, k, seed, column)
    out = []
    for i in range(k):
        rest = df[fold != i]
        inner = split_patients(rest, (1 - val_fraction, val_fraction), seed, column)
        parts = pd.Series("test", index=df.index, name=SPLIT)
        parts[rest.index] = inner.map({"train": "train", "test": "val"})
        out.append(pd.DataFrame({schema.IMAGE: df[schema.IMAGE].astype(str), schema.PATIENT_ID: df[schema.PATIENT_ID],
                                 SPLIT: parts}))
    return out


def write_folds(folds: Sequence[pd.DataFrame], out: str | os.PathLike) -> list[Path]:
    """``out/fold<i>.csv`` per fold (atomic), re-used by every arm."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, split in enumerate(folds):
        path = out / f"fold{i}.csv"
        atomic_write_text(path, split.to_csv(index=False))
        paths.append(path)
    return paths
