"""Ordinal grades: per-lung opacity 0-3 (one head per lung) and the six Brixia zones 0-3 (total 0-18).

Losses: ``ce`` (plain cross-entropy over grades), ``corn`` (conditional ordinal, Shi et al. 2021) or ``coral``
(rank-consistent thresholds, Cao et al. 2020), both from ``coral_pytorch``.

Decision (the predicted grade from the grade probabilities): ``mode`` (the most probable grade: fewest errors,
the usual classifier reading and the default with ``ce``) or ``median`` (the grade where the cumulative
probability passes one half: the smallest expected absolute error, the default of the ordinal losses). The
grades are scored by MAE, so ``median`` is the Bayes choice for it; with a balanced sampler (under / over /
double) the probabilities carry balanced priors and the median then targets the macro-averaged MAE.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from coral_pytorch.dataset import levels_from_labelbatch
from coral_pytorch.layers import CoralLayer
from coral_pytorch.losses import coral_loss
from sklearn.metrics import cohen_kappa_score, f1_score, roc_auc_score
from torch import Tensor, nn

from cxrlab.data import schema
from cxrlab.errors import ConfigError, InputError
from cxrlab.tasks.base import (Task, focal_ce, register_task, shown_value, sigmoid_np, softmax_np,
                               weighted_mean)

LOSSES = ("ce", "corn", "coral")
DECISIONS = ("mode", "median")


def corn_per_sample(logits: Tensor, y: Tensor, n_grades: int) -> Tensor:
    """``coral_pytorch.losses.corn_loss`` split per sample (vectorised): its mean equals ``corn_loss``.

    Threshold task k trains on the samples with grade >= k (the conditional subsets); each sample's summed
    binary losses are scaled by N / (number of sample-task pairs), the library's normalisation.
    """
    k = torch.arange(n_grades - 1, device=logits.device)
    in_subset = (y[:, None] >= k[None, :]).to(logits.dtype)
    label = (y[:, None] > k[None, :]).to(logits.dtype)
    logsig = nn.functional.logsigmoid(logits)
    terms = -(logsig * label + (logsig - logits) * (1 - label)) * in_subset
    return terms.sum(1) * (len(y) / in_subset.sum().clamp_min(1))


def macro_mae(y: np.ndarray, pred: np.ndarray) -> float:
    """MAE averaged over the true grades present (Baccianella et al.), robust to grade imbalance."""
    classes = np.unique(y)
    return float(np.mean([np.abs(pred[y == c] - c).mean() for c in classes])) if len(classes) else float("nan")


def decide(probs: np.ndarray, decision: str) -> np.ndarray:
    """Predicted grade per row of ``N×K`` grade probabilities: ``mode`` (argmax) or ``median`` (the number of
    thresholds k with P(grade > k) > 1/2, i.e. the first grade whose cumulative probability reaches 1/2)."""
    if decision == "mode":
        return probs.argmax(1)
    if decision == "median":
        return (1 - np.cumsum(probs, axis=1)[:, :-1] > 0.5).sum(1)
    raise ConfigError(f"decision must be one of {DECISIONS}, got {decision!r}")


class OrdinalTask(Task):
    """Grades in ``columns``, one head each; or, with ``per_side`` (ROI schemes yielding one input per lung),
    one shared head graded on each side's input, the two columns being the patient's right and left."""

    supports_focal = True  # only with loss=ce; checked in loss()

    def __init__(self, name: str | None, columns: list[str], n_grades: int = 4, loss: str = "ce",
                 weight: float = 1.0, per_side: bool = False, decision: str | None = None):
        super().__init__(name, weight)
        if loss not in LOSSES:
            raise ConfigError(f"task {self.name}: loss must be one of {LOSSES}, got {loss!r}")
        if decision is not None and decision not in DECISIONS:
            raise ConfigError(f"task {self.name}: decision must be one of {DECISIONS}, got {decision!r}")
        self.decision = decision or ("mode" if loss == "ce" else "median")
        self._columns = list(columns)
        self.n_grades = int(n_grades)
        self.loss_name = loss
        self.per_side = bool(per_side)
        if self.per_side and len(self._columns) != 2:
            raise ConfigError(f"task {self.name}: per-side grading needs the two lungs' columns (right, left), "
                              f"got {self._columns}")

    @property
    def outputs(self) -> list[str]:
        """What the heads grade: the columns, or the task name standing for 'this side' when per-side."""
        return [self.name] if self.per_side else self.columns

    def side_key(self, key: str, side: int) -> str:
        """A per-side item column name (``pred_opacity``) → the row column of that side (``pred_opacity_right``)."""
        return key.replace(self.name, self.columns[side], 1)

    @property
    def columns(self) -> list[str]:
        return self._columns

    def head_name(self, column: str) -> str:
        return self.name if column == self.name else f"{self.name}:{column}"

    def _encode(self, column: str, values: pd.Series, source: object) -> np.ndarray:
        num = pd.to_numeric(values, errors="coerce")
        bad = (values.notna() & num.isna()) | (num.notna() & ~num.isin(range(self.n_grades)))
        if bad.any():
            raise InputError(source, f"grade must be an integer 0..{self.n_grades - 1}, found {shown_value(values[bad].iloc[0])}",
                             field=column)
        return num.to_numpy(dtype=float)

    def strata(self, targets: np.ndarray) -> np.ndarray:
        # balance on the worst graded region of the image (the rarest, most severe grades)
        worst = np.nanmax(np.where(np.isnan(targets), -1, targets), axis=1)
        return worst.astype(int)

    @property
    def n_strata(self) -> int:
        return self.n_grades

    def heads(self, num_features: int) -> dict[str, nn.Module]:
        def head() -> nn.Module:
            if self.loss_name == "coral":
                return CoralLayer(num_features, self.n_grades)
            return nn.Linear(num_features, self.n_grades if self.loss_name == "ce" else self.n_grades - 1)

        return {self.head_name(c): head() for c in self.outputs}

    def _per_sample(self, logits: Tensor, y: Tensor, gamma: float) -> Tensor:
        logits = logits.float()
        if self.loss_name == "ce":
            return focal_ce(logits, y, gamma)
        if gamma > 0:
            raise ConfigError(f"task {self.name}: focal balancing needs loss: ce, not {self.loss_name}")
        if self.loss_name == "coral":
            return coral_loss(logits, levels_from_labelbatch(y, self.n_grades).to(logits), reduction=None)
        return corn_per_sample(logits, y, self.n_grades)

    def loss(self, outputs, targets, sample_weight=None, focal_gamma=0.0):
        total = 0.0
        for j, column in enumerate(self.outputs):
            t = targets[:, j]
            valid = ~torch.isnan(t)
            per = self._per_sample(outputs[self.head_name(column)], torch.where(valid, t, 0).long(), focal_gamma)
            total = total + weighted_mean(per, valid, sample_weight)
        return total / len(self.outputs)

    def grade_probs(self, logits: np.ndarray) -> np.ndarray:
        """Probability of each grade, for every loss (ordinal heads: differences of P(grade > k))."""
        if self.loss_name == "ce":
            return softmax_np(logits)
        above = sigmoid_np(logits)
        if self.loss_name == "corn":
            above = np.cumprod(above, axis=1)
        above = np.minimum.accumulate(above, axis=1)  # enforce P(>k) non-increasing in k
        cum = np.concatenate([np.ones((len(logits), 1)), above, np.zeros((len(logits), 1))], axis=1)
        return np.clip(cum[:, :-1] - cum[:, 1:], 0, 1)

    def decode(self, outputs):
        out: dict[str, np.ndarray] = {}
        for column in self.outputs:
            probs = self.grade_probs(outputs[self.head_name(column)])
            for g in range(self.n_grades):
                out[f"prob_{column}_{g}"] = probs[:, g]
            out[f"pred_{column}"] = decide(probs, self.decision)
            out[f"score_{column}"] = probs @ np.arange(self.n_grades)  # expected grade
        return out

    def _column_metrics(self, y: np.ndarray, pred: np.ndarray, probs: np.ndarray) -> dict[str, float]:
        out = {"mae": float(np.abs(pred - y).mean()), "macro_mae": macro_mae(y, pred),
               "accuracy": float((pred == y).mean())}
        out["qwk"] = float(cohen_kappa_score(y, pred, weights="quadratic")) if len(np.unique(y)) > 1 else float("nan")
        # the opacity paper's binary collapses: grade >= t vs < t, scored with P(grade >= t)
        for t in range(1, self.n_grades):
            yb, pb = (y >= t).astype(int), probs[:, t:].sum(1)
            out[f"auc_ge{t}"] = float(roc_auc_score(yb, pb)) if 0 < yb.sum() < len(yb) else float("nan")
            out[f"f1_ge{t}"] = float(f1_score(yb, (pred >= t).astype(int), zero_division=0))
        return out

    def metrics(self, targets, decoded):
        per_col: dict[str, dict[str, float]] = {}
        ys, preds, probs = [], [], []
        for j, column in enumerate(self.columns):
            keep = ~np.isnan(targets[:, j])
            y = targets[keep, j].astype(int)
            pred = np.asarray(decoded[f"pred_{column}"])[keep].astype(int)
            pr = np.stack([decoded[f"prob_{column}_{g}"] for g in range(self.n_grades)], axis=1)[keep]
            if len(y):
                per_col[column] = self._column_metrics(y, pred, pr)
            ys.append(y), preds.append(pred), probs.append(pr)
        y, pred, pr = np.concatenate(ys), np.concatenate(preds), np.concatenate(probs)
        out = {"n": int(len(y))}
        if len(y):
            out.update(self._column_metrics(y, pred, pr))  # pooled over columns (both lungs / all zones)
        for column, m in per_col.items():
            out.update({f"{column}.{k}": v for k, v in m.items()})
        return out

    def config(self) -> dict[str, Any]:
        return {**super().config(), "columns": self.columns, "n_grades": self.n_grades, "loss": self.loss_name,
                "per_side": self.per_side, "decision": self.decision}


@register_task("opacity", description="per-lung ordinal opacity 0-3 (0 %, 1-33 %, 34-66 %, 67-100 % of the lung)")
class OpacityTask(OrdinalTask):
    """One head per lung (``sides``: right, left or both). Pass ``columns`` to grade other region columns."""

    def __init__(self, name: str | None = None, sides: list[str] | None = None, loss: str = "ce",
                 columns: list[str] | None = None, weight: float = 1.0, per_side: bool = False,
                 decision: str | None = None):
        sides = list(sides or ["right", "left"])
        bad = [s for s in sides if s not in ("right", "left")]
        if bad:
            raise ConfigError(f"task opacity: sides must be right/left (the patient's), got {bad}")
        cols = columns or [schema.OPACITY_RIGHT if s == "right" else schema.OPACITY_LEFT for s in sides]
        super().__init__(name or "opacity", cols, 4, loss, weight, per_side, decision)


@register_task("zones", description="six Brixia zones 0-3 (A-C patient right, D-F patient left), total 0-18")
class ZonesTask(OrdinalTask):
    def __init__(self, name: str | None = None, loss: str = "ce", columns: list[str] | None = None,
                 weight: float = 1.0, decision: str | None = None):
        super().__init__(name or "zones", columns or list(schema.BRIXIA_COLUMNS), 4, loss, weight,
                         decision=decision)

    def decode(self, outputs):
        out = super().decode(outputs)
        out[f"pred_{schema.BRIXIA_GLOBAL}"] = np.sum([out[f"pred_{c}"] for c in self.columns], axis=0)
        out[f"score_{schema.BRIXIA_GLOBAL}"] = np.sum([out[f"score_{c}"] for c in self.columns], axis=0)
        return out

    def metrics(self, targets, decoded):
        out = super().metrics(targets, decoded)
        complete = ~np.isnan(targets).any(axis=1)
        if complete.any():
            total = targets[complete].sum(1)
            out["global_mae"] = float(np.abs(decoded[f"pred_{schema.BRIXIA_GLOBAL}"][complete] - total).mean())
            out["global_score_mae"] = float(np.abs(decoded[f"score_{schema.BRIXIA_GLOBAL}"][complete] - total).mean())
        return out
