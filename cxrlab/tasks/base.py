"""What a task is: manifest columns → targets, heads, a loss, decoding to prediction columns, and metrics.

Targets are a float array ``(N, len(columns))`` with NaN where a label is missing; rows (or single targets)
without a label contribute nothing to the loss. ``strata`` gives one integer per row for balancing and
stratified splits (None for regression).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from cxrlab.errors import ConfigError, InputError
from cxrlab.registry import Registry

TASKS: Registry[type["Task"]] = Registry("task")


def register_task(name: str, **meta: Any):
    """Class decorator: ``@register_task("diagnosis")``; ``create_task(name, **options)`` builds it."""

    def deco(cls: type[Task]) -> type[Task]:
        cls.kind = name
        return TASKS.register(name, **meta)(cls)

    return deco


def create_task(kind: str, **options: Any) -> "Task":
    cls = TASKS.get(kind)
    known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"task {kind}: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return cls(**options)


def list_tasks() -> list[str]:
    return TASKS.list()


class Task(ABC):
    kind: str = ""
    #: losses that can take a focal modulation (class-probability based)
    supports_focal: bool = False

    def __init__(self, name: str | None = None, weight: float = 1.0):
        self.name = name or self.kind
        self.weight = float(weight)

    # --- data ---------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def columns(self) -> list[str]:
        """Manifest columns the targets come from."""

    def targets(self, df: pd.DataFrame, source: object = "manifest") -> np.ndarray:
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise InputError(source, f"task {self.name} needs column(s) {', '.join(missing)}")
        return np.stack([self._encode(c, df[c], source) for c in self.columns], axis=1).astype(np.float32)

    @abstractmethod
    def _encode(self, column: str, values: pd.Series, source: object) -> np.ndarray:
        """One column → float targets (NaN = missing); raise ``InputError`` naming bad values."""

    def strata(self, targets: np.ndarray) -> np.ndarray | None:
        """An integer class per row for balancing (-1 where unlabelled); None when the task has no classes."""
        return None

    @property
    def n_strata(self) -> int:
        return 0

    def stratum_names(self) -> list[str]:
        return [str(i) for i in range(self.n_strata)]

    # --- model --------------------------------------------------------------------------------------
    @abstractmethod
    def heads(self, num_features: int) -> dict[str, nn.Module]:
        """Output modules, keyed by head name (prefixed by the task name)."""

    @abstractmethod
    def loss(self, outputs: dict[str, Tensor], targets: Tensor, sample_weight: Tensor | None = None,
             focal_gamma: float = 0.0) -> Tensor:
        """Mean loss over labelled targets; ``sample_weight`` per row (class weights / focal α by stratum)."""

    @abstractmethod
    def decode(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Prediction columns (``prob_*``, ``pred_*``, scores) from logits."""

    @abstractmethod
    def metrics(self, targets: np.ndarray, decoded: dict[str, np.ndarray]) -> dict[str, float]:
        """Summary metrics on labelled rows (the evaluation package computes CIs and reports)."""

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "weight": self.weight}


def shown_value(value: Any) -> str:
    """A manifest cell as a user wrote it (``2``, ``'severe'``), not numpy's repr (``np.int64(2)``)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def weighted_mean(per_sample: Tensor, valid: Tensor, sample_weight: Tensor | None) -> Tensor:
    """Σ w·l / Σ w over valid entries (zero when nothing is labelled, keeping the graph)."""
    w = valid.float()
    if sample_weight is not None:
        w = w * sample_weight
    denom = w.sum()
    if denom <= 0:
        return per_sample.sum() * 0.0
    return (per_sample * w).sum() / denom


def focal_ce(logits: Tensor, target: Tensor, gamma: float) -> Tensor:
    """Per-sample cross-entropy, times (1 - p_true)^γ when γ > 0 (Lin et al.'s focal loss; α is the weight)."""
    logp = torch.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
    ce = -logp
    if gamma > 0:
        ce = ce * (1 - logp.exp()).clamp_min(0).pow(gamma)
    return ce


def inverse_class_frequency(labels: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """Per-class weight ``n / (K · n_c)`` over the K classes present among ``labels`` (ints, -1 = unlabelled);
    0 for a class with no item. The focal loss's α by default, and class-weight balancing's per-item weight."""
    labels = np.asarray(labels, dtype=np.int64)
    labelled = labels[labels >= 0]
    counts = np.bincount(labelled, minlength=n_classes or 0).astype(np.float64)
    present = counts > 0
    weights = np.zeros(len(counts))
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def softmax_np(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid_np(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
