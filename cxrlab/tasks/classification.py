"""Single-label multiclass diagnosis and binary outcomes (ICU admission...)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score, roc_auc_score
from torch import nn

from cxrlab.data import schema
from cxrlab.errors import ConfigError, InputError
from cxrlab.tasks.base import (Task, focal_ce, register_task, shown_value, sigmoid_np, softmax_np,
                               weighted_mean)


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


@register_task("diagnosis", description="single-label multiclass (e.g. normal / bacterial / viral / COVID-19)")
class DiagnosisTask(Task):
    """``classes`` in output order; ``class_map`` maps source labels onto them (``viral_other: viral``); labels
    outside both are missing targets (the row is skipped, not guessed)."""

    supports_focal = True

    def __init__(self, name: str | None = None, column: str = schema.FINDING,
                 classes: list[str] | None = None, class_map: dict[str, str] | None = None, weight: float = 1.0):
        super().__init__(name, weight)
        self.column = column
        self.classes = list(classes or schema.FINDINGS)
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ConfigError(f"task {self.name}: classes must be >= 2 distinct names, got {self.classes}")
        self.class_map = dict(class_map or {})
        bad = {v for v in self.class_map.values() if v not in self.classes}
        if bad:
            raise ConfigError(f"task {self.name}: class_map targets {sorted(bad)} are not in classes {self.classes}")

    @property
    def columns(self) -> list[str]:
        return [self.column]

    def _encode(self, column: str, values: pd.Series, source: object) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        mapped = values.map(lambda v: self.class_map.get(str(v), str(v)) if pd.notna(v) else None)
        return mapped.map(lambda v: index.get(v, np.nan) if v is not None else np.nan).to_numpy(dtype=float)

    def strata(self, targets: np.ndarray) -> np.ndarray:
        t = targets[:, 0]
        return np.where(np.isnan(t), -1, t).astype(int)

    @property
    def n_strata(self) -> int:
        return len(self.classes)

    def stratum_names(self) -> list[str]:
        return self.classes

    def heads(self, num_features: int) -> dict[str, nn.Module]:
        return {self.name: nn.Linear(num_features, len(self.classes))}

    def loss(self, outputs, targets, sample_weight=None, focal_gamma=0.0):
        t = targets[:, 0]
        valid = ~torch.isnan(t)
        per = focal_ce(outputs[self.name], torch.where(valid, t, 0).long(), focal_gamma)
        return weighted_mean(per, valid, sample_weight)

    def decode(self, outputs):
        probs = softmax_np(outputs[self.name])
        out = {f"prob_{c}": probs[:, i] for i, c in enumerate(self.classes)}
        out[f"pred_{self.name}"] = np.array(self.classes, dtype=object)[probs.argmax(1)]
        return out

    def metrics(self, targets, decoded):
        t = targets[:, 0]
        keep = ~np.isnan(t)
        y = t[keep].astype(int)
        probs = np.stack([decoded[f"prob_{c}"] for c in self.classes], axis=1)[keep]
        pred = probs.argmax(1)
        out = {"n": int(keep.sum()), "accuracy": float((pred == y).mean()) if len(y) else float("nan")}
        f1 = f1_score(y, pred, labels=list(range(len(self.classes))), average=None, zero_division=0)
        present = np.isin(np.arange(len(self.classes)), y)
        out["macro_f1"] = float(f1[present].mean()) if present.any() else float("nan")
        for i, c in enumerate(self.classes):
            out[f"f1_{c}"] = float(f1[i])
            out[f"auc_{c}"] = _auc((y == i).astype(int), probs[:, i])
        return out

    def config(self) -> dict[str, Any]:
        return {**super().config(), "column": self.column, "classes": self.classes, "class_map": self.class_map}


@register_task("binary", description="binary outcome from a 0/1 column (e.g. went_icu)")
class BinaryTask(Task):
    supports_focal = True

    def __init__(self, name: str | None = None, column: str = schema.WENT_ICU, weight: float = 1.0,
                 threshold: float = 0.5):
        super().__init__(name or column, weight)
        self.column = column
        self.threshold = threshold

    @property
    def columns(self) -> list[str]:
        return [self.column]

    def _encode(self, column: str, values: pd.Series, source: object) -> np.ndarray:
        num = pd.to_numeric(values, errors="coerce")
        bad = (values.notna() & num.isna()) | (num.notna() & ~num.isin([0, 1]))
        if bad.any():
            raise InputError(source, f"binary target must be 0/1, found {shown_value(values[bad].iloc[0])}", field=column)
        return num.to_numpy(dtype=float)

    def strata(self, targets: np.ndarray) -> np.ndarray:
        t = targets[:, 0]
        return np.where(np.isnan(t), -1, t).astype(int)

    @property
    def n_strata(self) -> int:
        return 2

    def heads(self, num_features: int) -> dict[str, nn.Module]:
        return {self.name: nn.Linear(num_features, 1)}

    def loss(self, outputs, targets, sample_weight=None, focal_gamma=0.0):
        t = targets[:, 0]
        valid = ~torch.isnan(t)
        logit = outputs[self.name][:, 0].float()
        y = torch.where(valid, t, 0)
        per = nn.functional.binary_cross_entropy_with_logits(logit, y, reduction="none")
        if focal_gamma > 0:
            p_true = torch.exp(-per)
            per = per * (1 - p_true).pow(focal_gamma)
        return weighted_mean(per, valid, sample_weight)

    def decode(self, outputs):
        p = sigmoid_np(outputs[self.name][:, 0])
        return {f"prob_{self.column}": p, f"pred_{self.column}": (p >= self.threshold).astype(int)}

    def metrics(self, targets, decoded):
        t = targets[:, 0]
        keep = ~np.isnan(t)
        y, p = t[keep].astype(int), decoded[f"prob_{self.column}"][keep]
        pred = (p >= self.threshold).astype(int)
        pos, neg = y == 1, y == 0
        return {"n": int(keep.sum()), "auc": _auc(y, p), "accuracy": float((pred == y).mean()) if len(y) else
                float("nan"), "sensitivity": float(pred[pos].mean()) if pos.any() else float("nan"),
                "specificity": float(1 - pred[neg].mean()) if neg.any() else float("nan"),
                "f1": float(f1_score(y, pred, zero_division=0)) if len(y) else float("nan")}

    def config(self) -> dict[str, Any]:
        return {**super().config(), "column": self.column, "threshold": self.threshold}
