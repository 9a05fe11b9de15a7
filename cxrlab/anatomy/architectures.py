"""Segmentation architectures (segmentation-models-pytorch) and encoders, each in a registry.

``create_segmentation_model("unet", "efficientnet_lite0", weights="imagenet", in_channels=1, classes=3)``
returns a ``SegmentationNet``: the smp model with its input normalisation built in, so callers always feed
``[0, 1]`` images and the encoder's registry entry alone fixes preprocessing.
"""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

from cxrlab.anatomy.weights import load_lite0_imagenet
from cxrlab.errors import ConfigError
from cxrlab.registry import Registry

ARCHITECTURES: Registry[type] = Registry("segmentation architecture")
ENCODERS: Registry[dict[str, Any]] = Registry("segmentation encoder")

# The nine decoders of the severity-scoring paper.
for _name, _cls in [("unet", smp.Unet), ("unetplusplus", smp.UnetPlusPlus), ("deeplabv3", smp.DeepLabV3),
                    ("deeplabv3plus", smp.DeepLabV3Plus), ("fpn", smp.FPN), ("manet", smp.MAnet),
                    ("linknet", smp.Linknet), ("pspnet", smp.PSPNet), ("pan", smp.PAN)]:
    ARCHITECTURES.register(_name, smp_class=_cls.__name__)(_cls)


def _no_weights(encoder: nn.Module, in_channels: int) -> None:
    """Random initialisation (the encoders the severity paper trained from scratch)."""


# Preprocessing contract: inputs in [0, 1], normalised inside the model by (x - mean) / std per channel 0;
# extra channels (masks) pass as 0/1. Lite0's TF weights expect (x - 0.5) / 0.5.
ENCODERS.register("resnet18", smp_name="resnet18", weights={"none": _no_weights}, mean=0.5, std=0.5)(
    {"smp_name": "resnet18"})
ENCODERS.register("resnet34", smp_name="resnet34", weights={"none": _no_weights}, mean=0.5, std=0.5)(
    {"smp_name": "resnet34"})
ENCODERS.register("efficientnet_lite0", smp_name="tu-efficientnet_lite0",
                  weights={"none": _no_weights, "imagenet": load_lite0_imagenet}, mean=0.5, std=0.5)(
    {"smp_name": "tu-efficientnet_lite0"})


class SegmentationNet(nn.Module):
    """smp model + fixed input normalisation of the image channel. Input ``N×C×H×W`` in [0, 1]; output logits."""

    def __init__(self, net: nn.Module, in_channels: int, mean: float, std: float):
        super().__init__()
        self.net = net
        self.in_channels = in_channels
        shift = torch.zeros(1, in_channels, 1, 1)
        scale = torch.ones(1, in_channels, 1, 1)
        shift[0, 0], scale[0, 0] = mean, std
        self.register_buffer("shift", shift, persistent=False)
        self.register_buffer("scale", scale, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ConfigError(f"model expects input N×{self.in_channels}×H×W, got {tuple(x.shape)}")
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ConfigError(f"input height and width must be multiples of 32, got {tuple(x.shape[-2:])}")
        return self.net((x - self.shift) / self.scale)


def create_segmentation_model(arch: str, encoder: str, weights: str = "none", in_channels: int = 1,
                              classes: int = 3, **arch_kwargs: Any) -> SegmentationNet:
    """Build ``arch`` × ``encoder`` with ``weights`` (``none`` or ``imagenet`` where the encoder has them);
    ``arch_kwargs`` go to the smp class (e.g. ``decoder_channels`` for a lighter U-Net decoder)."""
    cls = ARCHITECTURES.get(arch)
    meta = ENCODERS.meta(encoder)
    if weights not in meta["weights"] and not weights.startswith("run:"):
        raise ConfigError(f"encoder {encoder!r} has no weights {weights!r}; available: {sorted(meta['weights'])}")
    if in_channels < 1 or classes < 1:
        raise ConfigError(f"in_channels and classes must be >= 1, got {in_channels}, {classes}")
    try:
        net = cls(encoder_name=meta["smp_name"], encoder_weights=None, in_channels=in_channels, classes=classes,
                  **arch_kwargs)
    except TypeError as exc:
        raise ConfigError(f"architecture {arch!r}: {exc}") from None
    if weights.startswith("run:"):  # a cxrlab pretrain run's backbone (its own input normalisation)
        from cxrlab.anatomy.weights import load_run_backbone

        mean, std = load_run_backbone(net.encoder, in_channels, weights[4:], encoder)
        return SegmentationNet(net, in_channels, mean, std)
    meta["weights"][weights](net.encoder, in_channels)
    return SegmentationNet(net, in_channels, meta["mean"], meta["std"])
