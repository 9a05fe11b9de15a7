"""``CxrNet``: normalisation + backbone + one linear head per output, the model every task trains.

Input is the raw [0, 1] image (plus mask channels) at the contract's size: the normalisation of the weight
source lives inside the model, so prediction, Grad-CAM and ONNX export never have to repeat it.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from cxrlab.models.backbones import Backbone, get_backbone_entry
from cxrlab.models.weights import LoadReport


class CxrNet(nn.Module):
    def __init__(self, backbone: Backbone, heads: Mapping[str, int | nn.Module], mean: Sequence[float],
                 std: Sequence[float], dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(backbone.num_features, h) if isinstance(h, int) else h
                                    for name, h in heads.items()})

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def features(self, x: Tensor) -> Tensor:
        """Pooled backbone features of [0, 1] input."""
        return self.backbone(self.normalize(x))

    def forward_heads(self, features: Tensor) -> dict[str, Tensor]:
        features = self.dropout(features)
        return {name: head(features) for name, head in self.heads.items()}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Logits per head for [0, 1] input ``(B, C, H, W)``."""
        return self.forward_heads(self.features(x))

    def forward_from(self, activations: Tensor, start: int) -> dict[str, Tensor]:
        """Heads from activations cached at the output of stage ``start - 1`` (``start=0``: normalised input)."""
        return self.forward_heads(self.backbone(activations, start=start))

    def boundary(self, x: Tensor, stop: int) -> Tensor:
        """Activations after the first ``stop`` stages (what a frozen prefix hands to the trainable rest)."""
        return self.backbone.run_stages(self.normalize(x), 0, stop)

    def as_classifier(self, head: str) -> nn.Module:
        """A module returning one head's logits as a plain tensor (for pytorch-grad-cam targets and ONNX)."""
        return _SingleHead(self, head)


class _SingleHead(nn.Module):
    def __init__(self, net: CxrNet, head: str):
        super().__init__()
        self.net = net
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)[self.head]


HeadSpec = Mapping[str, int | nn.Module] | Callable[[int], Mapping[str, nn.Module]]


def create_model(backbone: str, heads: HeadSpec, in_chans: int = 1, weights: str | None = "none",
                 dropout: float = 0.0) -> tuple[CxrNet, LoadReport | None]:
    """A ``CxrNet`` with the entry's normalisation for ``weights``; returns the weight load report too.

    ``heads``: name → output size (linear heads) or module, or a function of the feature width returning
    modules (what ``cxrlab.tasks`` tasks provide: ``task.heads``).
    """
    entry = get_backbone_entry(backbone)
    body, report = entry.create(in_chans, weights)
    mean, std = entry.normalization(in_chans, weights)
    head_modules = heads(body.num_features) if callable(heads) else heads
    return CxrNet(body, head_modules, mean, std, dropout), report
