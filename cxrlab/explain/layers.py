"""Which layer a CAM looks at: the backbone registry entry's ``cam_layer`` when the model has one, a dotted
path given by the user (``"layer4"``, ``"features.-1"``), or else found by a probe forward pass."""

from __future__ import annotations

import torch
from torch import nn

from cxrlab.errors import ConfigError


def resolve_layer(model: nn.Module, path: str) -> nn.Module:
    """``"backbone.layer4.-1"`` -> that submodule (integers index containers, negatives from the end)."""
    module: nn.Module = model
    for part in path.split("."):
        if part.lstrip("-").isdigit() and isinstance(module, (nn.Sequential, nn.ModuleList)):
            module = module[int(part)]
        elif hasattr(module, part) and isinstance(getattr(module, part), nn.Module):
            module = getattr(module, part)
        else:
            raise ConfigError(f"CAM target layer {path!r}: {type(module).__name__} has no submodule {part!r}")
    return module


def auto_target_layer(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The module that finishes LAST among those producing a spatial ``N×C×H×W`` map with H, W > 1.

    That is the deepest feature map before global pooling (e.g. ``layer4`` of a ResNet, ``features`` of a
    DenseNet, ``conv_head``/``bn2`` of an EfficientNet), the usual Grad-CAM choice.
    """
    last: list[nn.Module] = []

    def hook(module: nn.Module, _inp, out) -> None:
        if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] > 1 and out.shape[-2] > 1:
            last.append(module)

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    if not last:
        raise ConfigError(f"{type(model).__name__}: no layer produces a spatial feature map; cannot compute a CAM")
    return last[-1]


def target_layers_for(model: nn.Module, example: torch.Tensor, layer: str | None = None) -> list[nn.Module]:
    """Explicit ``layer`` path, else the model's ``cam_layer`` attribute (set from the backbone registry
    entry by ``cxrlab.models``), else the probe."""
    path = layer or getattr(model, "cam_layer", None)
    if path:
        return [resolve_layer(model, path)]
    return [auto_target_layer(model, example)]
