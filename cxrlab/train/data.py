"""The run's table: manifests fused, filtered, labelled rows kept, split by patient, expanded into model items."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.data.manifest import Manifest
from cxrlab.data.splits import SPLIT, assert_patient_disjoint, kfold_patients, split_patients
from cxrlab.errors import ConfigError, InputError
from cxrlab.data.fusion import train_only_rows
from cxrlab.recipes.schema import BeforeEventSpec, Recipe
from cxrlab.tasks import TaskSet

TRAIN_ONLY = "_train_only"


def fuse_manifests(recipe: Recipe, manifests: list[Manifest]) -> pd.DataFrame:
    """The first manifest is split; later ones are renamed (``data.rename``) and, with ``data.extra:
    train_only``, used for training only (label fusion), or pooled before the split. Rows that ``cxrlab data
    fuse`` marked ``train_only`` stay training-only wherever they come from. ``data.label_map`` maps label
    values first (in every manifest holding the column)."""
    if not manifests:
        raise ConfigError("no data: give at least one manifest (--data)")
    for key, columns in (("label_map", recipe.data.label_map), ("label_bins", recipe.data.label_bins)):
        for column in columns:
            if not any(column in m.df.columns for m in manifests):
                raise InputError(manifests[0].source or "manifest", f"data.{key} names a column no manifest has",
                                 field=column)
    frames = []
    for i, m in enumerate(manifests):
        df = m.df.copy()
        for column, table in recipe.data.label_map.items():
            if column in df.columns:
                df[column] = map_values(df[column], table, m.source or f"manifest {i + 1}", column)
        for column, bins in recipe.data.label_bins.items():
            if column in df.columns:
                df[column] = bin_values(df[column], bins.edges, bins.labels, m.source or f"manifest {i + 1}", column)
        if i > 0:
            clash = [f"{a} -> {b}" for a, b in recipe.data.rename.items() if a in df.columns and b in df.columns
                     and a != b]
            if clash:  # two columns of one name: pandas would keep both and the labels would be ambiguous
                raise InputError(m.source or f"manifest {i + 1}", f"data.rename {', '.join(clash)}: the manifest "
                                 "already has the target column (drop or rename it first)", field=clash[0])
            df = df.rename(columns=recipe.data.rename)
        df[TRAIN_ONLY] = train_only_rows(df) | (i > 0 and recipe.data.extra == "train_only")
        frames.append(df)
    df = pd.concat(frames, ignore_index=True, sort=False)
    for column, allowed in recipe.data.filter.items():
        if column not in df.columns:
            raise InputError("manifest", "data.filter names a missing column", field=column)
        df = df[df[column].isin(allowed)]
    return df.reset_index(drop=True)


def refuse_duplicate_films(df: pd.DataFrame, source: object) -> None:
    """A film labelled twice (in one manifest or across the fused ones) would train twice, and under two patient
    ids could sit in train and in val/test at once: ``InputError`` naming the image. Call it on the rows that
    keep a target: a copy without a label (dropped anyway, e.g. a fused film's unlabelled primary row) is fine."""
    repeated = df[schema.IMAGE].astype(str).duplicated(keep=False)
    if repeated.any():
        first = df.loc[repeated, schema.IMAGE].iloc[0]
        raise InputError(source, f"{int(df.loc[repeated, schema.IMAGE].nunique())} labelled image(s) are listed more "
                                 f"than once across the data (e.g. {first}, {int(repeated.sum())} rows in all); a film "
                                 "must be one row — remove the duplicates", field=schema.IMAGE)


def _value_key(value: Any) -> str | None:
    """Matching key of a label value: numbers by value (1, 1.0 and "1" match), text stripped and lower-case."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, bool):
        return str(int(value))
    text = str(value).strip()
    try:
        number = float(text)
        return str(int(number)) if number.is_integer() else repr(number)
    except ValueError:
        return text.lower()


def map_values(values: pd.Series, table: dict[Any, Any], source: object, column: str) -> pd.Series:
    """``values`` mapped through ``table`` (``data.label_map``); empty cells stay empty, a value with no
    entry is an ``InputError`` naming it (a silently unmapped label would drop or mislabel rows)."""
    lookup = {_value_key(k): v for k, v in table.items()}
    keys = values.map(_value_key)
    unknown = sorted({str(v) for v, k in zip(values, keys) if k is not None and k not in lookup})
    if unknown:
        raise InputError(source, f"data.label_map.{column} has no entry for value(s) {', '.join(map(repr, unknown))}"
                         f" (mapped: {', '.join(map(repr, map(str, table)))})", field=column)
    return keys.map(lambda k: None if k is None else lookup[k])


def bin_values(values: pd.Series, edges: list[float], labels: list[Any], source: object, column: str) -> pd.Series:
    """``data.label_bins``: numeric values cut at ``edges`` (right-open: a value equal to an edge takes the upper
    label); empty cells stay empty, text that is not a number is an ``InputError`` naming it."""
    numbers = pd.to_numeric(values, errors="coerce")
    text = values.notna() & numbers.isna()
    if text.any():
        shown = sorted({str(v) for v in values[text]})[:5]
        raise InputError(source, f"data.label_bins.{column} needs numbers, found {', '.join(map(repr, shown))}",
                         field=column)
    index = np.searchsorted(np.asarray(edges, float), numbers.to_numpy(float), side="right")
    out = pd.Series([labels[k] for k in index], index=values.index, dtype=object)
    out[numbers.isna()] = None
    return out


_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


def before_event_filter(df: pd.DataFrame, spec: BeforeEventSpec | None, source: object = "manifest"
                        ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Rows acquired before the event (``data.before_event``) and a report: how many went and why."""
    if spec is None:
        return df, {"before_event": None}
    report: dict[str, Any] = {"before_event": spec.model_dump(), "rows_in": int(len(df)), "removed": {},
                              "not_applied": []}
    drop = pd.Series(False, index=df.index)
    if spec.flag:
        if spec.flag in df.columns:
            keys = df[spec.flag].map(_value_key)
            flagged = keys.isin(_TRUE)
            report["removed"][f"{spec.flag} is true"] = int(flagged.sum())
            drop |= flagged
            unknown = ~flagged & ~keys.isin(_FALSE)
            if spec.unknown_flag == "drop":
                report["removed"][f"{spec.flag} unknown"] = int(unknown.sum())
                drop |= unknown
            else:
                report["kept_with_unknown_flag"] = int(unknown.sum())
        elif spec.required:
            raise InputError(source, "data.before_event.flag names a missing column", field=spec.flag)
        else:
            report["not_applied"].append(f"no column {spec.flag!r}")
    if spec.event_offset:
        missing = [c for c in (spec.event_offset, spec.offset) if c not in df.columns]
        if missing and spec.required:
            raise InputError(source, "data.before_event names a missing column", field=missing[0])
        if missing:
            report["not_applied"].append(f"no column {missing[0]!r}")
        else:
            event = pd.to_numeric(df[spec.event_offset], errors="coerce")
            offset = pd.to_numeric(df[spec.offset], errors="coerce")
            after = event.notna() & (offset.isna() | (offset >= event))  # no image date: cannot prove "before"
            report["removed"][f"{spec.offset} >= {spec.event_offset} (or no {spec.offset})"] = \
                int((after & ~drop).sum())
            drop |= after
    report["rows_removed"] = int(drop.sum())
    report["rows_kept"] = int((~drop).sum())
    report["patients_kept"] = int(df.loc[~drop, schema.PATIENT_ID].nunique()) if schema.PATIENT_ID in df else None
    return df[~drop].reset_index(drop=True), report


def assign_split(df: pd.DataFrame, recipe: Recipe) -> pd.Series:
    """train/val/test per row, by patient; train-only rows never val/test (see :func:`place_train_only`)."""
    spec, seed = recipe.split, recipe.seed
    main = df[~df[TRAIN_ONLY]]
    if not len(main):
        raise InputError("manifest", "every row is train-only (fused): nothing to validate or test on")
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
    return place_train_only(df, parts)


def place_train_only(df: pd.DataFrame, parts: pd.Series) -> pd.Series:
    """The full split from the primary rows' ``parts``: train-only rows go to ``train`` when their patient has no
    primary row outside train, and are dropped (``DROPPED``) when the patient is in val/test, so neither a
    fused row nor its patient ever reaches evaluation."""
    out = pd.Series("train", index=df.index, name=SPLIT, dtype=object)
    out[parts.index] = parts.astype(str)
    pids = df[schema.PATIENT_ID].astype(str)
    held_out = set(pids[parts.index][parts.astype(str) != "train"])
    only = df[TRAIN_ONLY].to_numpy(bool)
    out[only & pids.isin(held_out).to_numpy()] = DROPPED
    return out


DROPPED = "dropped"
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
                split: pd.DataFrame | None = None, split_source: object = "split.csv"
                ) -> tuple[RunTable, dict[str, Any]]:
    """Fuse, drop films taken after the event (``data.before_event``), keep labelled rows, split (or re-use
    ``split``, a saved or given split table), expand to items.

    Returns the table and what was removed on the way (``rows_without_target``, ``before_event``,
    ``train_only_dropped``): the run writes it to ``data_filter.json`` and ``metrics.json``.
    """
    source = manifests[0].source or "manifest"
    df = fuse_manifests(recipe, manifests)
    df, event_report = before_event_filter(df, recipe.data.before_event, source)
    targets = tasks.targets(df, source=source)
    keep = tasks.labelled(targets)
    dropped = int((~keep).sum())
    df, targets = df[keep].reset_index(drop=True), targets[keep]
    refuse_duplicate_films(df, source)
    if not len(df):
        raise InputError(source, f"no row has a target for {tasks.columns}")
    parts = assign_split(df, recipe) if split is None else split_from_table(df, split, split_source)
    removed = (parts == DROPPED).to_numpy()
    report = {"rows_without_target": dropped, **event_report,
              "train_only_dropped": int(removed.sum()),
              "train_only_dropped_reason": "train-only (fused) rows of patients whose primary rows are in val/test"}
    df, targets = df[~removed].reset_index(drop=True), targets[~removed]
    df[SPLIT] = parts[~removed].to_numpy()
    assert_patient_disjoint(df, SPLIT, source="run split")
    from cxrlab.pretrain.guard import check_pretrain_overlap  # a run: backbone must not have seen val/test

    check_pretrain_overlap(recipe.model.weights, df, SPLIT, allow=recipe.model.allow_pretrain_overlap)
    if df.loc[df[TRAIN_ONLY], SPLIT].ne("train").any():  # the invariant the whole fusion design rests on
        raise AssertionError("a train-only row reached val/test")
    for part in ("train", "val"):
        if not (df[SPLIT] == part).any():
            raise ConfigError(f"the split has no {part} rows (data too small for split {recipe.split.ratios}?)")
    item_row = np.repeat(np.arange(len(df)), per_image)
    item_side = np.tile(np.arange(per_image), len(df))
    item_targets = tasks.item_targets(targets, item_row, item_side).astype(np.float32)
    return RunTable(df, targets, item_row, item_side, item_targets), report


def split_from_table(df: pd.DataFrame, split: pd.DataFrame, source: object = "split.csv") -> pd.Series:
    """Parts from a split table (``cxrlab data split`` or a run's ``split.csv``), matched on ``image``.

    Every primary row must be listed; a train-only row may be absent (it trains, or is dropped when its
    patient is held out) but must not be listed in val/test.
    """
    lookup = split.set_index(split[schema.IMAGE].astype(str))[SPLIT]
    lookup = lookup[~lookup.index.duplicated()]
    parts = df[schema.IMAGE].astype(str).map(lookup)
    only = df[TRAIN_ONLY].to_numpy(bool)
    missing = parts.isna().to_numpy() & ~only
    if missing.any():
        raise InputError(source, f"{int(missing.sum())} image(s) of the data are not in the split, first: "
                                 f"{df.loc[missing, schema.IMAGE].iloc[0]}", field=schema.IMAGE)
    evaluated = only & parts.isin(["val", "test"]).to_numpy()
    if evaluated.any():
        raise InputError(source, f"{int(evaluated.sum())} train-only (fused) image(s) are put in val/test, first: "
                                 f"{df.loc[evaluated, schema.IMAGE].iloc[0]}", field=SPLIT)
    primary = parts[~only]
    check = df.loc[primary.index].assign(**{SPLIT: primary.to_numpy()})
    assert_patient_disjoint(check, SPLIT, source=source)
    return place_train_only(df, primary)
