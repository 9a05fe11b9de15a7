"""Evaluate a run's predictions: per target and split, every metric of its kind with patient-level CIs,
curves, calibration, subgroup tables and reader agreement. Returns plain dicts (what ``metrics.json`` holds).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Sequence

import numpy as np
import pandas as pd

from cxrlab.errors import InputError
from cxrlab.evaluate.agreement import agreement_table
from cxrlab.evaluate.binary import binary_metrics, pr_points, roc_points, validation_threshold
from cxrlab.evaluate.bootstrap import DEFAULT_N_BOOT
from cxrlab.evaluate.calibration import calibration, top_label
from cxrlab.evaluate.confound import frame_view_confound
from cxrlab.evaluate.multiclass import multiclass_metrics
from cxrlab.evaluate.ordinal import ordinal_metrics
from cxrlab.evaluate.regression import regression_metrics
from cxrlab.evaluate.run import SPLIT, Target
from cxrlab.evaluate.subgroups import AGE_BANDS, MIN_PATIENTS, subgroup_table

log = logging.getLogger(__name__)

SUBGROUP_COLUMNS = ("sex", "age", "race", "finding", "source_dataset", "view")
BINNED = {"age": AGE_BANDS}
# the metrics a subgroup table shows per kind
SUBGROUP_KEYS = {"binary": ["auc", "fixed.sensitivity", "fixed.specificity"],
                 "multiclass": ["accuracy", "macro_f1", "macro_auc"],
                 "ordinal": ["macro_mae", "kappa_quadratic", "weighted_f1"],
                 "regression": ["mae", "r2"]}
READER_SEP = "@"  # reader table columns: <target column>@<reader name>
# binary model probability -> 0/1 for reader agreement when no validation threshold is known
BINARY_AGREEMENT_THRESHOLD = 0.5


def labelled(df: pd.DataFrame, target: Target) -> pd.DataFrame:
    """Rows with a truth value (and a prediction) for ``target``."""
    y = target.truth(df)
    keep = np.isfinite(y) & np.isfinite(target.predicted(df))
    return df[keep]


def target_metrics(target: Target, df: pd.DataFrame, *, threshold: float | None = None, n_boot: int,
                   seed: int) -> dict:
    """The metric suite of the target's kind on the labelled rows of ``df``."""
    df = labelled(df, target)
    if len(df) == 0:
        raise InputError(target.column, "no labelled rows")
    y, pid = target.truth(df), df["patient_id"].to_numpy()
    if target.kind == "binary":
        p = target.predicted(df)
        res = binary_metrics(y.astype(int), p, pid, fixed_threshold=threshold, n_boot=n_boot, seed=seed)
        if len(np.unique(y)) == 2:
            res["roc"] = roc_points(y.astype(int), p)
            res["pr"] = pr_points(y.astype(int), p)
        res["calibration"] = calibration(y, p)
        return res
    if target.kind == "multiclass":
        probs = target.probs(df)
        res = multiclass_metrics(y.astype(int), classes=target.classes, probs=probs, patient_ids=pid,
                                 n_boot=n_boot, seed=seed)
        res["roc"] = {c: roc_points((y == k).astype(int), probs[:, k]) for k, c in enumerate(target.classes)
                      if 0 < (y == k).sum() < len(y)}
        res["pr"] = {c: pr_points((y == k).astype(int), probs[:, k]) for k, c in enumerate(target.classes)
                     if (y == k).sum() > 0}
        res["calibration"] = calibration(*top_label(y, probs))
        return res
    if target.kind == "ordinal":
        res = ordinal_metrics(y.astype(int), target.predicted(df).astype(int), len(target.classes),
                              patient_ids=pid, n_boot=n_boot, seed=seed)
        probs = target.probs(df)
        if probs is not None:
            res["calibration"] = calibration(*top_label(y, probs))
        return res
    res = regression_metrics(y, target.predicted(df), patient_ids=pid, n_boot=n_boot, seed=seed)
    res["points"] = {"truth": y.tolist(), "pred": target.predicted(df).tolist()}
    return res


def data_summary(df: pd.DataFrame, targets: Sequence[Target]) -> dict:
    """Patients, images and classes per split (and per source dataset when known)."""
    out: dict = {}
    for split, part in df.groupby(SPLIT, sort=False):
        entry = {"images": int(len(part)), "patients": int(part["patient_id"].nunique())}
        if "source_dataset" in part.columns:
            entry["sources"] = {str(k): {"images": int(len(g)), "patients": int(g["patient_id"].nunique())}
                                for k, g in part.groupby("source_dataset")}
        entry["classes"] = {}
        for t in targets:
            if t.kind == "regression":
                continue
            y = t.truth(part)
            counts = {t.classes[int(k)] if t.kind == "multiclass" else str(int(k)): int((y == k).sum())
                      for k in np.unique(y[np.isfinite(y)])}
            counts["unlabelled"] = int((~np.isfinite(y)).sum())
            entry["classes"][t.name] = counts
        out[str(split)] = entry
    return out


def fingerprint(df: pd.DataFrame, columns: Sequence[str]) -> str:
    """SHA-256 (16 hex) of the evaluated table: image names, patients, splits and truth, row-order free."""
    cols = [c for c in ["image", "patient_id", SPLIT, *columns] if c in df.columns]
    table = df[cols].map(str)  # elementwise, so missing values become "nan" (astype(str) may keep NaN)
    table["image"] = table["image"].map(lambda p: p.replace("\\", "/").rsplit("/", 1)[-1])
    rows = sorted("\t".join(r) for r in table.itertuples(index=False, name=None))
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


def eval_split(df: pd.DataFrame) -> str:
    """The split the headline numbers come from: test if present, else val, else all rows."""
    splits = set(df[SPLIT].astype(str))
    return "test" if "test" in splits else "val" if "val" in splits else "all"


def _rows(df: pd.DataFrame, split: str) -> pd.DataFrame:
    return df if split == "all" else df[df[SPLIT].astype(str) == split]


def subgroups(target: Target, df: pd.DataFrame, threshold: float | None, n_boot: int, seed: int,
              columns: Sequence[str] = SUBGROUP_COLUMNS, min_patients: int = MIN_PATIENTS) -> dict[str, list]:
    df = labelled(df, target)
    out = {}
    for col in columns:
        if col not in df.columns or col == target.column or df[col].nunique(dropna=True) < 2:
            continue
        out[col] = subgroup_table(
            df, col, lambda sub: target_metrics(target, sub, threshold=threshold, n_boot=n_boot, seed=seed),
            bins=BINNED.get(col), keys=SUBGROUP_KEYS[target.kind], min_patients=min_patients)
    return out


def model_grades(target: Target, df: pd.DataFrame, threshold: float | None = None) -> np.ndarray:
    """The model's grade per row for reader agreement: the predicted class or grade; for a binary target the
    probability thresholded (``>= threshold``, default 0.5), since a reader gives 0/1, not a probability."""
    predicted = target.predicted(df)
    if target.kind != "binary":
        return predicted
    cut = BINARY_AGREEMENT_THRESHOLD if threshold is None else threshold
    return np.where(np.isfinite(predicted), (predicted >= cut).astype(float), np.nan)


def reader_agreement(target_group: Sequence[Target], df: pd.DataFrame, readers: pd.DataFrame, n_boot: int,
                     seed: int, thresholds: dict[str, float] | None = None) -> dict | None:
    """Agreement of the model and the readers on the targets of one task (e.g. both lungs stacked).

    ``readers``: a table keyed by ``image`` with columns ``<target column>@<reader>`` on the target's scale.
    ``thresholds``: target name -> operating point for binary targets (the validation threshold the report
    uses); 0.5 where none is given. The threshold used is recorded in the result (``thresholds``).
    """
    stacks: dict[str, list] = {}
    pids: list = []
    used: dict[str, float] = {}
    for t in target_group:
        cols = [c for c in readers.columns if c.startswith(t.column + READER_SEP)]
        if not cols:
            continue
        merged = df.merge(readers[["image", *cols]], on="image", how="inner")
        if merged.empty:
            continue
        names = [c.split(READER_SEP, 1)[1] for c in cols]
        for name, col in zip(names, cols):
            stacks.setdefault(name, []).append(t.encode(merged[col]))
        threshold = (thresholds or {}).get(t.name)
        stacks.setdefault("model", []).append(model_grades(t, merged, threshold))
        if t.kind == "binary":
            used[t.column] = BINARY_AGREEMENT_THRESHOLD if threshold is None else float(threshold)
        pids.append(merged["patient_id"].to_numpy())
    readers_found = [k for k in stacks if k != "model"]
    if not readers_found:
        return None
    raters = {k: np.concatenate(v) for k, v in stacks.items() if len(v) == len(pids)}
    n_classes = len(target_group[0].classes) if target_group[0].kind != "regression" else 0
    if target_group[0].kind == "regression":
        raise InputError("readers", "reader agreement is defined for graded (ordinal/class) targets")
    res = agreement_table(raters, model="model", n_classes=n_classes, patient_ids=np.concatenate(pids),
                          n_boot=n_boot, seed=seed)
    res["columns"] = [t.column for t in target_group]
    if used:
        res["thresholds"] = used
    return res


def evaluate_predictions(df: pd.DataFrame, targets: Sequence[Target], *, readers: pd.DataFrame | None = None,
                         n_boot: int = DEFAULT_N_BOOT, seed: int = 0, min_patients: int = MIN_PATIENTS) -> dict:
    """Everything ``metrics.json`` holds except run metadata."""
    headline = eval_split(df)
    result: dict = {"eval_split": headline, "n_boot": n_boot, "seed": seed,
                    "data_summary": data_summary(df, targets), "targets": {}}
    thresholds: dict[str, float] = {}  # binary targets: the validation operating point, also used for readers
    for t in targets:
        entry: dict = {"kind": t.kind, "column": t.column, "task": t.task, "classes": t.classes, "splits": {}}
        threshold = None
        if t.kind == "binary":
            val = labelled(_rows(df, "val"), t)
            if len(val) and len(np.unique(t.truth(val))) == 2:
                threshold = validation_threshold(t.truth(val).astype(int), t.predicted(val))
                entry["validation_threshold"] = threshold
                thresholds[t.name] = threshold
        for split in ("val", "test") if headline == "test" else (headline,):
            part = _rows(df, split)
            if len(labelled(part, t)):
                entry["splits"][split] = target_metrics(t, part, threshold=threshold, n_boot=n_boot, seed=seed)
        entry["subgroups"] = subgroups(t, _rows(df, headline), threshold, n_boot, seed, min_patients=min_patients)
        if t.kind == "binary":  # view-only baseline and within-view AUCs (AP/supine vs PA), when views are known
            part = labelled(_rows(df, headline), t)
            confound = frame_view_confound(part, t.truth(part), t.predicted(part), n_boot=n_boot, seed=seed)
            if confound is not None:
                entry["view_confound"] = confound
        result["targets"][t.name] = entry
    if readers is not None:
        if "image" not in readers.columns:
            raise InputError("readers", "reader table needs an 'image' column", field="image")
        by_task: dict[str, list[Target]] = {}
        for t in targets:
            by_task.setdefault(t.task, []).append(t)
        agreement = {}
        for task, group in by_task.items():
            res = reader_agreement(group, _rows(df, headline), readers, n_boot, seed, thresholds)
            if res is not None:
                agreement[task] = res
        if not agreement:
            raise InputError("readers", f"no column named '<target>{READER_SEP}<reader>' matches the targets "
                             f"{[t.column for t in targets]} on the {headline} images")
        result["agreement"] = agreement
    return result
