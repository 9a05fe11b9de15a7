"""FLANNEL's neural weight module (Qiao et al. 2021): one weight per base learner, from their joint output.

The L learners' class probabilities are concatenated into f (L·C values per image); the outer product f fᵀ
(which holds every pairwise agreement between learners and classes) is flattened and mapped by one linear
layer to L scores, squashed by tanh (weights in [-1, 1], a learner can be voted against) or softmax (weights
sum to 1, a convex mix). The prediction is Softmax(Σ_i W_i P_i).

``forward`` returns the pre-softmax combination Σ_i W_i P_i (``logits``), so the focal loss and every other
cxrlab consumer of logits apply unchanged; ``predict_proba`` applies the softmax.

>>> module = NeuralWeightModule(n_learners=5, n_classes=4, activation="tanh")
>>> logits = module(probs)                  # probs (B, 5, 4) -> (B, 4)
>>> module.learner_weights(probs)           # (B, 5)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cxrlab.errors import ConfigError

ACTIVATIONS = ("tanh", "softmax")


class NeuralWeightModule(nn.Module):
    def __init__(self, n_learners: int, n_classes: int, activation: str = "tanh"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"unknown weight activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
        if n_learners < 1 or n_classes < 2:
            raise ConfigError(f"need at least 1 learner and 2 classes, got {n_learners} and {n_classes}")
        self.n_learners, self.n_classes, self.activation = n_learners, n_classes, activation
        features = n_learners * n_classes
        self.linear = nn.Linear(features * features, n_learners)

    def _check(self, probs: Tensor) -> None:
        if probs.ndim != 3 or probs.shape[1:] != (self.n_learners, self.n_classes):
            raise ConfigError(f"expected learner probabilities (B, {self.n_learners}, {self.n_classes}), "
                              f"got {tuple(probs.shape)}")

    def learner_weights(self, probs: Tensor) -> Tensor:
        """``(B, L)`` weights W from ``(B, L, C)`` probabilities."""
        self._check(probs)
        f = probs.flatten(1)                                   # (B, L·C): the concatenated P_i
        outer = (f[:, :, None] * f[:, None, :]).flatten(1)     # (B, (L·C)²): f fᵀ, flattened
        scores = self.linear(outer)
        return torch.tanh(scores) if self.activation == "tanh" else torch.softmax(scores, dim=1)

    def forward(self, probs: Tensor) -> Tensor:
        """``(B, C)`` Σ_i W_i P_i, the logits of the ensemble's prediction."""
        return (self.learner_weights(probs)[:, :, None] * probs).sum(dim=1)

    def predict_proba(self, probs: Tensor) -> Tensor:
        return torch.softmax(self(probs), dim=1)
