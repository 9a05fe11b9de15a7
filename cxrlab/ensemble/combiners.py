"""Combiners: base-learner probabilities (N, L, C) → one prediction (N, C), chosen by name.

Every combiner has the same two calls: ``fit(oof_probs, y)`` on out-of-fold probabilities of the training
patients (see :mod:`cxrlab.ensemble.oof`) and ``predict(probs) -> (N, C)`` class scores summing to 1;
``predict_label(probs) -> (N,)`` is their argmax unless a combiner decides ties its own way (``vote``).

- ``mean``: the mean of the learners' probabilities (nothing to fit).
- ``vote``: each learner votes for its top class; scores are vote shares, ties broken as in
  :mod:`cxrlab.patches.aggregate` (highest mean probability, then lowest class index).
- ``stacking``: scikit-learn ``LogisticRegression`` on the concatenated probabilities.
- ``neural_tanh`` / ``neural_softmax``: FLANNEL's neural weight module with focal loss
  (:mod:`cxrlab.ensemble.neural`).

>>> combiner = create_combiner("stacking", C=0.5).fit(oof_probs, y)
>>> probs = combiner.predict(test_probs)
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from cxrlab.errors import ConfigError
from cxrlab.patches.aggregate import majority_vote
from cxrlab.registry import Registry

COMBINERS: Registry[type["Combiner"]] = Registry("combiner")


def register_combiner(name: str, **meta: Any):
    """Class decorator: ``@register_combiner("mean")``."""

    def deco(cls: type[Combiner]) -> type[Combiner]:
        cls.name = name
        return COMBINERS.register(name, **meta)(cls)

    return deco


def create_combiner(name: str, **options: Any) -> "Combiner":
    """A new, unfitted combiner; unknown options are a ``ConfigError`` naming the known ones."""
    cls = COMBINERS.get(name)
    known = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"combiner {name}: unknown option(s) {', '.join(unknown)}; "
                          f"known: {', '.join(known) or '(none)'}")
    return cls(**options)


def list_combiners() -> list[str]:
    return COMBINERS.list()


def check_probs(probs: Any, what: str = "learner probabilities") -> np.ndarray:
    """``probs`` as float64 ``(N, L, C)``; a ``ConfigError`` for another shape or non-finite values."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 3 or min(p.shape) < 1 or p.shape[2] < 2:
        raise ConfigError(f"{what} must be (N, learners, classes) with at least 2 classes, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ConfigError(f"{what} contain NaN or infinite values")
    return p


def check_labels(y: Any, n: int, n_classes: int) -> np.ndarray:
    labels = np.asarray(y)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"labels must be {n} integer class indices, got shape {labels.shape} ({labels.dtype})")
    if ((labels < 0) | (labels >= n_classes)).any():
        raise ConfigError(f"labels must lie in 0..{n_classes - 1}")
    return labels.astype(np.int64)


class Combiner(ABC):
    name: str = ""

    def __init__(self) -> None:
        self.shape_: tuple[int, int] | None = None   # (learners, classes) seen by fit

    def fit(self, oof_probs: Any, y: Any) -> "Combiner":
        p = check_probs(oof_probs, "out-of-fold probabilities")
        self.shape_ = (p.shape[1], p.shape[2])
        self._fit(p, check_labels(y, len(p), p.shape[2]))
        return self

    def _fit(self, probs: np.ndarray, y: np.ndarray) -> None:
        """Learn from checked inputs; combiners with nothing to learn keep this no-op."""

    def predict(self, probs: Any) -> np.ndarray:
        p = check_probs(probs)
        if self.shape_ is None:
            raise ConfigError(f"combiner {self.name}: call fit(oof_probs, y) before predict")
        if p.shape[1:] != self.shape_:
            raise ConfigError(f"combiner {self.name} was fitted on {self.shape_[0]} learners × {self.shape_[1]} "
                              f"classes, got {p.shape[1]} × {p.shape[2]}")
        return self._predict(p)

    @abstractmethod
    def _predict(self, probs: np.ndarray) -> np.ndarray:
        """``(N, C)`` scores from checked ``(N, L, C)`` probabilities."""

    def predict_label(self, probs: Any) -> np.ndarray:
        return self.predict(probs).argmax(axis=1)


@register_combiner("mean")
class MeanCombiner(Combiner):
    def _predict(self, probs: np.ndarray) -> np.ndarray:
        return probs.mean(axis=1)


@register_combiner("vote")
class VoteCombiner(Combiner):
    def _predict(self, probs: np.ndarray) -> np.ndarray:
        return majority_vote(probs).probs

    def predict_label(self, probs: Any) -> np.ndarray:
        self.predict(probs)  # the same checks
        return majority_vote(check_probs(probs)).label


@register_combiner("stacking")
class StackingCombiner(Combiner):
    """Multinomial logistic regression on the L·C concatenated probabilities (``C``: inverse regularisation;
    ``class_weight``: None or ``"balanced"``, scikit-learn's inverse-frequency weights)."""

    def __init__(self, C: float = 1.0, class_weight: str | None = None, max_iter: int = 2000):
        super().__init__()
        from sklearn.linear_model import LogisticRegression

        self.model = LogisticRegression(C=C, class_weight=class_weight, max_iter=max_iter)

    def _fit(self, probs: np.ndarray, y: np.ndarray) -> None:
        if len(np.unique(y)) < 2:
            raise ConfigError("stacking needs at least two classes among the training labels")
        self.model.fit(probs.reshape(len(probs), -1), y)

    def _predict(self, probs: np.ndarray) -> np.ndarray:
        seen = self.model.predict_proba(probs.reshape(len(probs), -1))
        # a class absent from the training folds gets probability 0, keeping the (N, C) layout
        out = np.zeros((len(probs), probs.shape[2]))
        out[:, self.model.classes_] = seen
        return out
