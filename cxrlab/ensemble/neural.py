"""The ``neural_tanh`` and ``neural_softmax`` combiners: FLANNEL's neural weight module trained with focal loss.

Trained with Adam on mini-batches of the out-of-fold probabilities for a fixed number of epochs, from a seed
(same data and seed, same weights). The defaults fit a few thousand images × 5 learners in seconds on a CPU;
they are this library's choice, not FLANNEL's published schedule.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from cxrlab.ensemble.combiners import Combiner, check_probs, register_combiner
from cxrlab.ensemble.loss import FocalLoss
from cxrlab.ensemble.weight_module import NeuralWeightModule
from cxrlab.errors import ConfigError


class NeuralCombiner(Combiner):
    """``gamma``: focal γ; ``alpha``: ``"inverse_frequency"`` (FLANNEL), ``None`` (α = 1) or one weight per class."""

    activation = "tanh"

    def __init__(self, gamma: float = 2.0, alpha: str | Sequence[float] | None = "inverse_frequency",
                 epochs: int = 200, lr: float = 1e-2, batch_size: int = 128, weight_decay: float = 0.0,
                 seed: int = 0):
        super().__init__()
        if isinstance(alpha, str) and alpha != "inverse_frequency":
            raise ConfigError(f"focal α must be 'inverse_frequency', None or a list of weights, got {alpha!r}")
        if epochs < 1 or batch_size < 1 or lr <= 0:
            raise ConfigError("epochs and batch_size must be >= 1 and lr > 0")
        self.gamma, self.alpha = gamma, alpha
        self.epochs, self.lr, self.batch_size, self.weight_decay, self.seed = epochs, lr, batch_size, weight_decay, seed
        self.module: NeuralWeightModule | None = None
        self.losses_: list[float] = []   # mean training loss per epoch

    def _loss(self, y: np.ndarray, n_classes: int) -> FocalLoss:
        if isinstance(self.alpha, str):
            return FocalLoss.inverse_frequency(y, n_classes, self.gamma)
        return FocalLoss(self.gamma, self.alpha)

    def _fit(self, probs: np.ndarray, y: np.ndarray) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
            torch.manual_seed(self.seed)
            module = NeuralWeightModule(probs.shape[1], probs.shape[2], self.activation)
        loss_fn = self._loss(y, probs.shape[2])
        optimiser = torch.optim.Adam(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        x, t = torch.as_tensor(probs, dtype=torch.float32), torch.as_tensor(y)
        module.train()
        self.losses_ = []
        for _ in range(self.epochs):
            order = torch.randperm(len(x), generator=generator)
            total = 0.0
            for batch in order.split(self.batch_size):
                optimiser.zero_grad()
                loss = loss_fn(module(x[batch]), t[batch])
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(batch)
            self.losses_.append(total / len(x))
        self.module = module.eval()

    def _predict(self, probs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module.predict_proba(torch.as_tensor(probs, dtype=torch.float32)).double().numpy()

    def learner_weights(self, probs) -> np.ndarray:
        """``(N, L)`` the weight the fitted module gives each learner on each image."""
        self.predict(probs)  # the same checks
        with torch.no_grad():
            return self.module.learner_weights(torch.as_tensor(check_probs(probs), dtype=torch.float32)).numpy()


@register_combiner("neural_tanh")
class NeuralTanhCombiner(NeuralCombiner):
    activation = "tanh"


@register_combiner("neural_softmax")
class NeuralSoftmaxCombiner(NeuralCombiner):
    activation = "softmax"
