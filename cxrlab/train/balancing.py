"""Class-balancing strategies by name. They touch only the training part; validation and test are never resampled.

A strategy turns the training strata (one class per item, -1 = unlabelled) into, per epoch, the item indices to
visit (in order) and, for loss re-weighting, one weight per item.

- ``none``: every item once, shuffled.
- ``class_weight``: every item once; loss weight ``n / (K · n_c)``.
- ``sampler``: a weighted random sampler (probability ∝ 1 / n_c, with replacement, as many draws as items),
  like the imbalanced-dataset sampler of the COVID classification project.
- ``under``: each epoch a fresh random subset of every class the size of the rarest.
- ``over``: every class drawn with replacement up to the most frequent one's size; needs random augmentation
  so the copies differ (the trainer enables it).
- ``double``: the opacity paper's double-stage sampling. Training stage 1 (the head on the frozen backbone in
  the shipped two-stage recipes) sees a fresh under-sampled, balanced subset every epoch (as ``under``); every
  later stage (head + last N blocks) sees the entire unbalanced training set, each item once (as ``none``).
  It needs at least two stages: with a single stage there is no second stage to give the unbalanced data to,
  and quietly splitting one stage's epochs would train something the paper does not describe while results
  are labelled "double", so ``check_stages`` refuses it (use ``under``, or add a stage).
- ``focal``: every item once; focal loss with α = inverse class frequency (as ``class_weight``) and ``γ``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from cxrlab.errors import ConfigError
from cxrlab.registry import Registry
from cxrlab.tasks.base import inverse_class_frequency


@dataclass(frozen=True)
class Balancer:
    name: str
    needs_augmentation: bool = False
    focal: bool = False

    def _counts(self, strata: np.ndarray) -> np.ndarray:
        labelled = strata[strata >= 0]
        if not len(labelled):
            raise ConfigError(f"balancing {self.name}: no labelled training items")
        return np.bincount(labelled)

    def inverse_frequency(self, strata: np.ndarray) -> np.ndarray:
        """Per-item weight n / (K · n_c) over the classes present (1 for unlabelled items)."""
        self._counts(strata)  # a clear error when nothing is labelled
        w_class = inverse_class_frequency(strata)
        return np.where(strata >= 0, w_class[np.clip(strata, 0, None)], 1.0)

    def sample_weight(self, strata: np.ndarray) -> np.ndarray | None:
        return self.inverse_frequency(strata) if self.name in ("class_weight", "focal") else None

    def check_stages(self, n_stages: int) -> None:
        """A ``ConfigError`` when the strategy cannot follow the recipe's stages (``double`` needs two or more)."""
        if self.name == "double" and n_stages < 2:
            raise ConfigError("train.balancing=double is double-stage sampling: stage 1 on under-sampled, balanced "
                              "data, later stages on all of it; this recipe has one stage (add a stage, e.g. the "
                              "head first and then the last blocks, or use balancing: under)")

    def stage_mode(self, stage: int) -> str:
        """The strategy a (0-based) training stage samples with: ``double`` is ``under`` then ``none``."""
        if self.name == "double":
            return "under" if stage == 0 else "none"
        return self.name

    def epoch_indices(self, strata: np.ndarray, stage: int, generator: torch.Generator) -> np.ndarray:
        """Training item indices, in visiting order, for one epoch of training stage ``stage`` (0-based)."""
        n = len(strata)
        mode = self.stage_mode(stage)
        if mode == "sampler":
            weights = torch.as_tensor(self.inverse_frequency(strata), dtype=torch.double)
            return np.fromiter(WeightedRandomSampler(weights, n, replacement=True, generator=generator), int, n)
        if mode in ("under", "over"):
            counts = self._counts(strata)
            present = np.flatnonzero(counts)
            target = counts[present].min() if mode == "under" else counts[present].max()
            picks = []
            for c in present:
                members = np.flatnonzero(strata == c)
                if mode == "under":
                    order = torch.randperm(len(members), generator=generator).numpy()[:target]
                    picks.append(members[order])
                else:  # every original once, then random copies up to the target
                    extra = torch.randint(len(members), (target - len(members),), generator=generator).numpy()
                    picks.append(np.concatenate([members, members[extra]]))
            chosen = np.concatenate(picks + [np.flatnonzero(strata < 0)])
            return chosen[torch.randperm(len(chosen), generator=generator).numpy()]
        return torch.randperm(n, generator=generator).numpy()


BALANCING: Registry[Balancer] = Registry("balancing strategy")
for _name, _kwargs in {"none": {}, "class_weight": {}, "sampler": {}, "under": {},
                       "over": {"needs_augmentation": True}, "double": {}, "focal": {"focal": True}}.items():
    BALANCING.register(_name)(Balancer(_name, **_kwargs))


def get_balancer(name: str) -> Balancer:
    return BALANCING.get(name)
