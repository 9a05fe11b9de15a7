"""FLANNEL's focal loss: Σ_m -α_m y_m (1 - ŷ_m)^γ log ŷ_m with ŷ = softmax(logits), averaged over the batch.

Built on :func:`cxrlab.tasks.base.focal_ce` (the per-sample (1 - p_true)^γ · cross-entropy every classification
task uses) with a per-class α on top. γ = 0 and α = 1 give plain cross-entropy. α defaults to the inverse
class frequency of the training labels (:func:`cxrlab.tasks.base.inverse_class_frequency`), as in FLANNEL.

>>> loss_fn = FocalLoss.inverse_frequency(y_train, n_classes=4, gamma=2.0)
>>> loss = loss_fn(logits, targets)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from cxrlab.errors import ConfigError
from cxrlab.tasks.base import focal_ce, inverse_class_frequency


class FocalLoss(nn.Module):
    """Mean over the batch of α[y] · (1 - p_y)^γ · (-log p_y); ``alpha=None`` means α = 1 for every class."""

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | Tensor | None = None):
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"focal γ must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        alpha_t = None if alpha is None else torch.as_tensor(np.asarray(alpha, dtype=np.float32))
        if alpha_t is not None and (alpha_t.ndim != 1 or (alpha_t < 0).any()):
            raise ConfigError(f"focal α must be one non-negative weight per class, got {alpha}")
        self.register_buffer("alpha", alpha_t)

    @classmethod
    def inverse_frequency(cls, labels: np.ndarray, n_classes: int, gamma: float = 2.0) -> "FocalLoss":
        """α_m = n / (M · n_m) from ``labels``, M the classes present (FLANNEL's default)."""
        return cls(gamma, inverse_class_frequency(labels, n_classes))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        per = focal_ce(logits, target.long(), self.gamma)
        if self.alpha is not None:
            if self.alpha.numel() != logits.shape[1]:
                raise ConfigError(f"focal α has {self.alpha.numel()} weights for {logits.shape[1]} classes")
            per = per * self.alpha[target.long()]
        return per.mean()
