"""Reading a run directory for evaluation (no torch): predictions, the tasks' configuration, recipe, history,
and what each task's prediction columns mean.

Task configs (``model.json["tasks"]``, written by ``cxrlab.train``) map onto evaluation kinds:
``diagnosis`` -> multiclass, ``binary`` -> binary, ``opacity``/``zones``/ordinal -> ordinal per column,
``severity`` -> regression per column. Prediction columns follow ``cxrlab.tasks`` decoding:
``prob_<class>`` + ``pred_<task>`` (diagnosis), ``prob_<column>`` (binary), ``prob_<column>_<grade>`` +
``pred_<column>`` (ordinal), ``pred_<column>`` (regression).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cxrlab.errors import InputError

SPLIT = "split"
ORDINAL_KINDS = {"opacity", "zones", "ordinal"}


@dataclass
class RunData:
    run_dir: Path
    predictions: pd.DataFrame
    tasks: list[dict]
    recipe: dict = field(default_factory=dict)
    recipe_text: str = ""
    model_info: dict = field(default_factory=dict)
    history: pd.DataFrame | None = None
    train_metrics: dict = field(default_factory=dict)


@dataclass
class Target:
    """One evaluated quantity: its kind, the truth column and the prediction columns."""

    name: str
    kind: str  # binary | multiclass | ordinal | regression
    column: str
    classes: list[str] = field(default_factory=list)
    prob_columns: list[str] = field(default_factory=list)
    pred_column: str | None = None
    class_map: dict[str, str] = field(default_factory=dict)
    task: str = ""

    def truth(self, df: pd.DataFrame) -> np.ndarray:
        """Float truth per row (class index for classification), NaN where unlabelled."""
        return self.encode(df[self.column])

    def encode(self, values: pd.Series) -> np.ndarray:
        """Labels on this target's scale (class names -> index for classification), NaN where missing."""
        if self.kind == "multiclass":
            index = {c: i for i, c in enumerate(self.classes)}
            mapped = values.map(lambda v: index.get(self.class_map.get(str(v), str(v)), np.nan)
                                if pd.notna(v) else np.nan)
            return mapped.to_numpy(dtype=float)
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)

    def probs(self, df: pd.DataFrame) -> np.ndarray | None:
        if not self.prob_columns:
            return None
        return df[self.prob_columns].to_numpy(dtype=float)

    def predicted(self, df: pd.DataFrame) -> np.ndarray:
        """Predicted class index / grade / value per row."""
        if self.kind == "multiclass":
            return self.probs(df).argmax(axis=1).astype(float)
        if self.kind == "binary":
            return df[self.prob_columns[0]].to_numpy(dtype=float)
        return pd.to_numeric(df[self.pred_column], errors="coerce").to_numpy(dtype=float)


def _read_yaml(path: Path) -> tuple[dict, str]:
    if not path.is_file():
        return {}, ""
    text = path.read_text()
    try:
        return yaml.safe_load(text) or {}, text
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML: {exc}") from exc


def read_run(run_dir: str | os.PathLike) -> RunData:
    run_dir = Path(run_dir)
    pred_path = run_dir / "predictions.parquet"
    if not run_dir.is_dir():
        raise InputError(run_dir, "run directory does not exist")
    if not pred_path.is_file():
        raise InputError(run_dir, "no predictions.parquet: is this a finished run directory?")
    try:
        predictions = pd.read_parquet(pred_path)
    except Exception as exc:  # pyarrow raises several kinds; the user needs file and reason
        raise InputError(pred_path, f"cannot read: {exc}") from exc
    for col in ("image", "patient_id", SPLIT):
        if col not in predictions.columns:
            raise InputError(pred_path, f"missing column {col!r}", field=col)
    predictions["patient_id"] = predictions["patient_id"].astype(str)
    model_info = json.loads((run_dir / "model.json").read_text()) if (run_dir / "model.json").is_file() else {}
    recipe, recipe_text = _read_yaml(run_dir / "recipe.yaml")
    tasks = model_info.get("tasks") or recipe.get("tasks") or []
    if not tasks:
        raise InputError(run_dir, "no task configuration (model.json 'tasks' or recipe.yaml 'tasks')")
    history = pd.read_csv(run_dir / "history.csv") if (run_dir / "history.csv").is_file() else None
    metrics_path = run_dir / "metrics.json"
    train_metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return RunData(run_dir, predictions, tasks, recipe, recipe_text, model_info, history, train_metrics)


def targets_of(tasks: list[dict], predictions: pd.DataFrame) -> list[Target]:
    """The evaluation targets of a run's tasks whose columns are present in the predictions."""
    out: list[Target] = []
    cols = set(predictions.columns)
    for spec in tasks:
        kind, name = spec.get("kind"), spec.get("name") or spec.get("kind")
        if kind == "diagnosis":
            column = spec.get("column", "finding")
            classes = list(spec.get("classes") or [])
            probs = [f"prob_{c}" for c in classes]
            if column in cols and set(probs) <= cols:
                out.append(Target(name, "multiclass", column, classes, probs, f"pred_{name}",
                                  dict(spec.get("class_map") or {}), name))
        elif kind == "binary":
            column = spec.get("column", "went_icu")
            if column in cols and f"prob_{column}" in cols:
                out.append(Target(column, "binary", column, ["0", "1"], [f"prob_{column}"], f"pred_{column}",
                                  task=name))
        elif kind in ORDINAL_KINDS:
            n = int(spec.get("n_grades", 4))
            for column in spec.get("columns") or []:
                probs = [f"prob_{column}_{g}" for g in range(n)]
                if column in cols and f"pred_{column}" in cols:
                    out.append(Target(column, "ordinal", column, [str(g) for g in range(n)],
                                      probs if set(probs) <= cols else [], f"pred_{column}", task=name))
        elif kind == "severity":
            for column in spec.get("columns") or []:
                if column in cols and f"pred_{column}" in cols:
                    out.append(Target(column, "regression", column, pred_column=f"pred_{column}", task=name))
    if not out:
        raise InputError("predictions.parquet", f"no evaluable target for tasks {[t.get('kind') for t in tasks]}")
    return out
