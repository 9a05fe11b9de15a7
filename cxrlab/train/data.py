"""The run's table: manifests fused, filtered, labelled rows kept, split by patient, expanded into model items."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.data.manifest import Manifest
from cxrlab.data.splits import SPLIT, assert_patient_disjoint, kfold_patients, split_patients
from cxrlab.errors import ConfigError, InputError
from cxrlab.recipes.schema import Recipe
from cxrlab.tasks import TaskSet

TRAIN_ONLY = "_train_only"


def fuse_manifests(recipe: Recipe, manifests: list[Manifest]) -> pd.DataFrame:
    """The first manifest is split; later ones are renamed (``data.rename``) and, with ``data.extra:
    train_only``, used for training only (label fusion), or pooled before the split."""
    if not manifests:
        raise ConfigError("no data: give at least one manifest (--data)")
    frames = []
    for i, m in enumerate(manifests):
        df = m.df.copy()
        if i > 0:
            df = df.rename(columns=recipe.data.rename)
        df[TRAIN_ONLY] = i > 0 and recipe.data.extra == "train_only"
        frames.append(df)
    df = pd.concat(frames, ignore_index=True, sort=False)
    for column, allowed in recipe.data.filter.items():
        if column not in df.columns:
            raise InputError("manifest", "data.filter names a missing column", field=column)
        df = df[df[column].isin(allowed)]
    return df.reset_index(drop=True)


def assign_split(df: pd.DataFrame, recipe: Recipe) -> pd.Series:
    """train/val/test per row, by patient (rows marked train-only always train)."""
    spec, seed = recipe.split, recipe.seed
    main = df[~df[TRAIN_ONLY]]
    if spec.stratify and spec.stratify not in df.columns:
        raise InputError("manifest", "split.stratify names a missing column", field=spec.stratify)
    if spec.column:
        if spec.column not in main.columns:
            raise InputError("manifest", "split.column names a missing column", field=spec.column)
        parts = main[spec.column].astype(str)
        bad = sorted(set(parts) - {"train", "val", "test"})
        if bad:
            raise InputError("manifest", f"split values must be train/val/test, found {bad}", field=spec.column)
    elif spec.folds:
        fold = kfold_patients(main, spec.folds, seed, spec.stratify)
        test = fold == spec.fold
        rest = main[~test]
        inner = split_patients(rest, (1 - spec.val_fraction, spec.val_fraction), seed, spec.stratify)
        parts = pd.Series("test", index=main.index)
        parts[rest.index] = inner.map({"train": "train", "test": "val"})
    else:
        parts = split_patients(main, spec.ratios, seed, spec.stratify)
    out = pd.Series("train", index=df.index, name=SPLIT)
    out[main.index] = parts
    return out


@dataclass
class RunTable:
    """Rows (manifest + ``split``), their targets, and the items (row, side) the model sees."""

    df: pd.DataFrame
    row_targets: np.ndarray
    item_row: np.ndarray
    item_side: np.ndarray
    item_targets: np.ndarray

    @property
    def item_split(self) -> np.ndarray:
        return self.df[SPLIT].to_numpy()[self.item_row]

    def items(self, part: str) -> np.ndarray:
        return np.flatnonzero(self.item_split == part)


def build_table(recipe: Recipe, manifests: list[Manifest], tasks: TaskSet, per_image: int,
                split: pd.DataFrame | None = None) -> tuple[RunTable, int]:
    """Fuse, keep labelled rows, split (or re-use ``split``, a saved split table), expand to items.

    Returns the table and the number of rows dropped for having no target at all.
    """
    df = fuse_manifests(recipe, manifests)
    targets = tasks.targets(df, source=manifests[0].source or "manifest")
    keep = tasks.labelled(targets)
    dropped = int((~keep).sum())
    df, targets = df[keep].reset_index(drop=True), targets[keep]
    if not len(df):
        raise InputError(manifests[0].source or "manifest", f"no row has a target for {tasks.columns}")
    if split is not None:
        parts = df[schema.IMAGE].astype(str).map(split.set_index(split[schema.IMAGE].astype(str))[SPLIT])
        if parts.isna().any():
            raise InputError("split.csv", f"{int(parts.isna().sum())} image(s) of the data are not in the saved split")
        df[SPLIT] = parts.to_numpy()
    else:
        df[SPLIT] = assign_split(df, recipe).to_numpy()
    assert_patient_disjoint(df, SPLIT, source="run split")
    for part in ("train", "val"):
        if not (df[SPLIT] == part).any():
            raise ConfigError(f"the split has no {part} rows (data too small for split {recipe.split.ratios}?)")
    item_row = np.repeat(np.arange(len(df)), per_image)
    item_side = np.tile(np.arange(per_image), len(df))
    item_targets = tasks.item_targets(targets, item_row, item_side).astype(np.float32)
    return RunTable(df, targets, item_row, item_side, item_targets), dropped
