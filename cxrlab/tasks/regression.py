"""Regression of continuous severity scores (Cohen geographic extent 0-8, opacity 0-6...)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrlab.data import schema
from cxrlab.errors import ConfigError, InputError
from cxrlab.tasks.base import Task, register_task, shown_value, weighted_mean

LOSSES = {"mse": nn.functional.mse_loss, "l1": nn.functional.l1_loss, "huber": nn.functional.smooth_l1_loss}


@register_task("severity", description="regression of continuous scores, one output per column")
class SeverityTask(Task):
    """``ranges`` (column → [low, high]) scale targets to [0, 1] for training and clip predictions back."""

    def __init__(self, name: str | None = None, columns: list[str] | None = None,
                 ranges: dict[str, list[float]] | None = None, loss: str = "mse", weight: float = 1.0):
        super().__init__(name or "severity", weight)
        self._columns = list(columns or [schema.GEOGRAPHIC_EXTENT, schema.OPACITY_SCORE])
        default = {schema.GEOGRAPHIC_EXTENT: [0.0, 8.0], schema.OPACITY_SCORE: [0.0, 6.0], schema.BRIXIA_GLOBAL:
                   [0.0, 18.0]}
        self.ranges = {c: list((ranges or {}).get(c, default.get(c, [0.0, 1.0]))) for c in self._columns}
        if loss not in LOSSES:
            raise ConfigError(f"task {self.name}: loss must be one of {sorted(LOSSES)}, got {loss!r}")
        self.loss_name = loss

    @property
    def columns(self) -> list[str]:
        return self._columns

    def _encode(self, column: str, values: pd.Series, source: object) -> np.ndarray:
        num = pd.to_numeric(values, errors="coerce")
        bad = values.notna() & num.isna()
        if bad.any():
            raise InputError(source, f"severity target must be numeric, found {shown_value(values[bad].iloc[0])}", field=column)
        lo, hi = self.ranges[column]
        return ((num - lo) / (hi - lo)).to_numpy(dtype=float)

    def heads(self, num_features: int) -> dict[str, nn.Module]:
        return {self.name: nn.Linear(num_features, len(self.columns))}

    def loss(self, outputs, targets, sample_weight=None, focal_gamma=0.0):
        if focal_gamma > 0:
            raise ConfigError(f"task {self.name}: focal balancing applies to classification tasks only")
        valid = ~torch.isnan(targets)
        per = LOSSES[self.loss_name](outputs[self.name].float(), torch.where(valid, targets, 0), reduction="none")
        w = None if sample_weight is None else sample_weight[:, None].expand_as(per)
        return weighted_mean(per, valid, w)

    def decode(self, outputs):
        out = {}
        for j, column in enumerate(self.columns):
            lo, hi = self.ranges[column]
            out[f"pred_{column}"] = np.clip(outputs[self.name][:, j], 0, 1) * (hi - lo) + lo
        return out

    def metrics(self, targets, decoded):
        out: dict[str, float] = {}
        for j, column in enumerate(self.columns):
            keep = ~np.isnan(targets[:, j])
            lo, hi = self.ranges[column]
            y = targets[keep, j] * (hi - lo) + lo
            p = decoded[f"pred_{column}"][keep]
            if not len(y):
                continue
            err = p - y
            out[f"{column}.n"] = int(len(y))
            out[f"{column}.mae"] = float(np.abs(err).mean())
            out[f"{column}.rmse"] = float(np.sqrt((err ** 2).mean()))
            out[f"{column}.r"] = float(np.corrcoef(y, p)[0, 1]) if len(y) > 2 and y.std() > 0 and p.std() > 0 \
                else float("nan")
            out[f"{column}.r2"] = float(1 - (err ** 2).sum() / ((y - y.mean()) ** 2).sum()) if y.std() > 0 \
                else float("nan")
        maes = [v for k, v in out.items() if k.endswith(".mae")]
        out["mae"] = float(np.mean(maes)) if maes else float("nan")
        return out

    def config(self) -> dict[str, Any]:
        return {**super().config(), "columns": self.columns, "ranges": self.ranges, "loss": self.loss_name}
