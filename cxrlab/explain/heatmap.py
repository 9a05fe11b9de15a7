"""The opacity paper's heatmap: one CAM per class, averaged with the model's output probabilities as weights;
for per-lung (two-headed) models, the maps of the patient-right and patient-left heads averaged. The result
is min-max scaled to [0, 1] per image again, so thresholds (HCS) are relative to the map's peak.

Output layouts understood: logits ``N×K`` (one head), ``N×heads×K`` (per-lung heads), ``N×1`` (one sigmoid
logit; classes "negative"/"positive" with probabilities 1-p and p).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from cxrlab.errors import ConfigError
from cxrlab.explain.cams import compute_cam


class OutputTarget:
    """pytorch-grad-cam target: ``sign * output[head, k]`` (or ``output[k]`` for one head) of one image."""

    def __init__(self, k: int, head: int | None = None, sign: float = 1.0):
        self.k, self.head, self.sign = k, head, sign

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        out = output if self.head is None else output[self.head]
        return self.sign * out[self.k]


def rescale(maps: np.ndarray) -> np.ndarray:
    """Min-max scale each ``H×W`` map of ``N×H×W`` to [0, 1] (a flat map becomes all zeros)."""
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1), 0).astype(np.float32)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"{type(model).__name__} returns {type(out).__name__}; CAMs need a logits tensor")
    return out.float()


def class_probabilities(logits: torch.Tensor, head: int | None = None) -> np.ndarray:
    """``N×K`` probabilities of one head (softmax; a single logit becomes [1 - sigmoid, sigmoid])."""
    out = logits if head is None else logits[:, head]
    if out.ndim != 2:
        raise ConfigError(f"logits of shape {tuple(logits.shape)}: pass head= for a per-lung (N×heads×K) output")
    if out.shape[1] == 1:
        p = torch.sigmoid(out[:, 0])
        return torch.stack([1 - p, p], dim=1).numpy()
    return torch.softmax(out, dim=1).numpy()


def class_maps(model: nn.Module, x: torch.Tensor, method: str, target_layers: Sequence[nn.Module], n_classes: int,
               *, head: int | None = None, single_logit: bool = False) -> np.ndarray:
    """``K×N×H×W``: the CAM of every class (for a single sigmoid logit: -logit and +logit)."""
    maps = []
    for k in range(n_classes):
        target = OutputTarget(0, head, sign=1.0 if k == 1 else -1.0) if single_logit else OutputTarget(k, head)
        maps.append(compute_cam(model, x, method, target_layers, [target] * len(x)))
    return np.stack(maps)


def probability_weighted_heatmap(model: nn.Module, x: torch.Tensor, method: str,
                                 target_layers: Sequence[nn.Module], *, head: int | None = None
                                 ) -> tuple[np.ndarray, np.ndarray]:
    """(``N×H×W`` heatmap = sum_k p_k * CAM_k, ``N×K`` probabilities) for one head."""
    logits = _logits(model, x)
    probs = class_probabilities(logits, head)
    single = (logits if head is None else logits[:, head]).shape[1] == 1
    maps = class_maps(model, x, method, target_layers, probs.shape[1], head=head, single_logit=single)
    return rescale(np.einsum("nk,knhw->nhw", probs, maps)), probs


def per_lung_heatmap(model: nn.Module, x: torch.Tensor, method: str, target_layers: Sequence[nn.Module],
                     heads: Sequence[int] = (0, 1)) -> tuple[np.ndarray, list[np.ndarray]]:
    """Mean of the probability-weighted heatmaps of the per-lung heads; also returns each head's probabilities."""
    heats, probs = zip(*(probability_weighted_heatmap(model, x, method, target_layers, head=h) for h in heads))
    return rescale(np.mean(np.stack(heats), axis=0)), list(probs)


def heatmap(model: nn.Module, x: torch.Tensor, method: str, target_layers: Sequence[nn.Module]
            ) -> tuple[np.ndarray, np.ndarray]:
    """The paper's heatmap for any supported output layout; probabilities ``N×K`` (``N×heads×K`` per lung)."""
    logits = _logits(model, x)
    if logits.ndim == 3:
        heat, probs = per_lung_heatmap(model, x, method, target_layers, heads=range(logits.shape[1]))
        return heat, np.stack(probs, axis=1)
    return probability_weighted_heatmap(model, x, method, target_layers)
