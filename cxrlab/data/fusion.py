"""Label fusion (the ICU paper's data extension): merge manifests from several sources, mapping a secondary
label onto the primary one through a table, and let fused rows enter training only by default.

>>> fused = fuse_manifests(sbu, [(ricord, PRESETS["ricord_icu"])])
>>> fused.manifest.df.groupby(["source_dataset", "train_only"]).size()

Evaluation parts of a split must hold primary rows only: ``train_only`` = 1 marks the rows a split must
send to training (see :func:`train_only_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.data.manifest import Manifest
from cxrlab.errors import ConfigError, InputError

TRAIN_ONLY = "train_only"
FUSED_FROM = "fused_from"  # the secondary column and value a fused label came from


@dataclass(frozen=True)
class LabelMap:
    """Map ``source_column`` of a secondary manifest onto ``target_column`` with ``table`` (value -> label)."""

    source_column: str
    target_column: str
    table: dict[str, Any]

    def apply(self, df: pd.DataFrame, where: object) -> pd.Series:
        if self.source_column not in df.columns:
            raise InputError(where, f"column {self.source_column!r} needed by the label map is missing",
                             field=self.source_column)
        keys = df[self.source_column].map(lambda v: str(v).strip().lower() if pd.notna(v) else None)
        table = {str(k).strip().lower(): v for k, v in self.table.items()}
        return keys.map(table)


PRESETS = {
    # RICORD airspace disease grading -> ICU admission (negative/mild/moderate -> no ICU, severe -> ICU)
    "ricord_icu": LabelMap("ricord_grade", schema.WENT_ICU, {"negative": 0, "mild": 0, "moderate": 0, "severe": 1}),
}


def parse_label_map(spec: str) -> LabelMap:
    """A preset name, or ``source:target:value=label,value=label`` (labels parsed as numbers when they are)."""
    if spec in PRESETS:
        return PRESETS[spec]
    try:
        source, target, pairs = spec.split(":", 2)
        table = {}
        for pair in filter(None, pairs.split(",")):
            key, value = pair.split("=", 1)
            table[key.strip()] = _number(value.strip())
    except ValueError:
        raise ConfigError(f"label map {spec!r}: use a preset ({', '.join(PRESETS)}) or "
                          "source_column:target_column:value=label,...") from None
    if not table:
        raise ConfigError(f"label map {spec!r} has no value=label pairs")
    return LabelMap(source.strip(), target.strip(), table)


def _number(text: str) -> Any:
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        return text


@dataclass
class FusionResult:
    manifest: Manifest
    report: pd.DataFrame  # rows of secondary manifests dropped because their label had no mapping


def fuse_manifests(primary: Manifest, secondaries: Sequence[tuple[Manifest, LabelMap | None]], *,
                   train_only: bool = True, drop_unmapped: bool = True) -> FusionResult:
    """Concatenate ``primary`` and the mapped ``secondaries``.

    Each secondary row gets the target label from its map (``None``: labels taken as they are),
    ``train_only`` = 1 (unless ``train_only=False``) and ``fused_from``. Rows whose value has no entry in
    the table are dropped and reported (``drop_unmapped``). Patient ids shared by two sources are an error:
    the same id must not mean two people, nor one person be split across sources unnoticed.
    """
    frames = [primary.df.assign(**{TRAIN_ONLY: 0, FUSED_FROM: None})]
    dropped = []
    for manifest, label_map in secondaries:
        df = manifest.df.copy()
        where = manifest.source or "secondary manifest"
        if label_map is not None:
            mapped = label_map.apply(df, where)
            df[FUSED_FROM] = label_map.source_column + "=" + df[label_map.source_column].astype(str)
            unmapped = mapped.isna()
            if drop_unmapped and unmapped.any():
                values = df.loc[unmapped, label_map.source_column]
                dropped.append(pd.DataFrame({"image": df.loc[unmapped, schema.IMAGE],
                                             "source_dataset": df.loc[unmapped, schema.SOURCE_DATASET],
                                             "reason": [f"{label_map.source_column}={v!r} has no mapping to "
                                                        f"{label_map.target_column}" for v in values]}))
                df, mapped = df[~unmapped], mapped[~unmapped]
            df[label_map.target_column] = mapped.astype(float)
        else:
            df[FUSED_FROM] = "as is"
        df[TRAIN_ONLY] = int(train_only)
        frames.append(df)
    _check_patients(frames)
    fused = pd.concat(frames, ignore_index=True, sort=False)
    report = pd.concat(dropped, ignore_index=True) if dropped else pd.DataFrame(
        columns=["image", "source_dataset", "reason"])
    attrs = {"fusion": {"train_only": train_only, "sources": sorted(fused[schema.SOURCE_DATASET].astype(str).unique())}}
    return FusionResult(Manifest(fused, None, attrs), report)


def _check_patients(frames: list[pd.DataFrame]) -> None:
    owner: dict[str, str] = {}
    for df in frames:
        for pid, source in df[[schema.PATIENT_ID, schema.SOURCE_DATASET]].drop_duplicates(schema.PATIENT_ID)\
                .itertuples(index=False):
            if pid in owner and owner[pid] != source:
                raise InputError(schema.PATIENT_ID, f"patient id {pid!r} appears in two sources ({owner[pid]} and "
                                                    f"{source}); prefix the ids per source")
            owner[str(pid)] = str(source)


def train_only_rows(df: pd.DataFrame) -> np.ndarray:
    """Boolean mask of rows that must stay in training (fused rows)."""
    return df[TRAIN_ONLY].fillna(0).astype(int).to_numpy() == 1 if TRAIN_ONLY in df.columns else \
        np.zeros(len(df), bool)


def split_fused(df: pd.DataFrame, ratios: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
                stratify: str | None = None) -> pd.Series:
    """Patient-level split of the primary rows; fused (train-only) rows all go to 'train', except those of a
    patient whose primary rows are in val/test: they get no part (NaN) and must be left out of the split (the
    same rule as ``cxrlab train``), so neither a fused film nor its patient reaches evaluation."""
    from cxrlab.data.splits import SPLIT, assert_patient_disjoint, split_patients

    fused = train_only_rows(df)
    parts = pd.Series("train", index=df.index, name=SPLIT, dtype=object)
    if (~fused).any():
        parts[~fused] = split_patients(df[~fused], ratios=ratios, seed=seed, stratify=stratify)
    pids = df[schema.PATIENT_ID].astype(str)
    held_out = set(pids[~fused & (parts != "train").to_numpy()])
    parts[fused & pids.isin(held_out).to_numpy()] = None
    kept = parts.notna()
    assert_patient_disjoint(df[kept].assign(**{SPLIT: parts[kept]}))
    return parts


def kfold_fused(df: pd.DataFrame, k: int = 5, seed: int = 0, stratify: str | None = None) -> pd.Series:
    """Patient-level folds of the primary rows; fused rows get fold -1 (in the training part of every fold).

    A patient with both primary and fused rows is refused: fold -1 would train on its fused films in the fold
    that tests it (``cxrlab train`` with ``split.folds`` handles such patients by dropping those films)."""
    from cxrlab.data.splits import FOLD, kfold_patients

    fused = train_only_rows(df)
    pids = df[schema.PATIENT_ID].astype(str)
    both = sorted(set(pids[fused]) & set(pids[~fused]))
    if both:
        raise InputError(schema.PATIENT_ID, f"{len(both)} patient(s) have both primary and fused (train-only) rows, "
                         f"first: {both[0]}; a fold file cannot keep their fused films out of the fold that tests "
                         "them (use `cxrlab train` with split.folds, which drops them there)")
    folds = pd.Series(-1, index=df.index, name=FOLD, dtype=int)
    if (~fused).any():
        folds[~fused] = kfold_patients(df[~fused], k=k, seed=seed, stratify=stratify)
    return folds
