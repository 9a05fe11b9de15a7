"""CAM methods by name over pytorch-grad-cam, always used through its context manager so hooks never leak.

>>> maps = compute_cam(model, x, "gradcam", target_layers, targets=[ClassifierOutputTarget(2)] * len(x))

Maps come back as pytorch-grad-cam returns them: ``N×H×W`` float32, ReLU'd, min-max scaled to [0, 1] per
image and resized to the input's ``H×W``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from torch import nn

from cxrlab.registry import Registry

CAM_METHODS: Registry[type] = Registry("CAM method")

for _name, _cls, _needs_grad in [
    ("gradcam", GradCAM, True),
    ("gradcam++", GradCAMPlusPlus, True),
    ("xgradcam", XGradCAM, True),
    ("hirescam", HiResCAM, True),
    ("layercam", LayerCAM, True),
    ("eigencam", EigenCAM, False),  # class-agnostic: first principal component of the activations
    ("scorecam", ScoreCAM, False),  # gradient-free, one forward pass per activation channel (slow)
]:
    CAM_METHODS.register(_name, uses_gradients=_needs_grad, cls=_cls.__name__)(_cls)


def list_cam_methods() -> list[str]:
    return CAM_METHODS.list()


def compute_cam(
    model: nn.Module,
    x: torch.Tensor,
    method: str,
    target_layers: Sequence[nn.Module],
    targets: Sequence[Callable[[torch.Tensor], torch.Tensor]] | None = None,
    *,
    batch_size: int = 32,
) -> np.ndarray:
    """``N×H×W`` maps of ``method`` for input ``x`` (``N×C×H×W``) and one target per image."""
    cls = CAM_METHODS.get(method)
    # pytorch-grad-cam calls model.eval(); put back every module's own mode afterwards (restoring only the top
    # module's flag would push a fresh wrapper's training mode down onto an eval-mode network's BatchNorms)
    modes = {m: m.training for m in model.modules()}
    # the input must require grad: with a frozen backbone (stage-1 training) the target layer's output would
    # otherwise carry no gradient and gradient-based CAMs would come back empty
    x = x.detach().clone().requires_grad_(True)
    try:
        with cls(model=model, target_layers=list(target_layers)) as cam:
            cam.batch_size = batch_size  # ScoreCAM reads it (masked forward passes per batch); others ignore it
            maps = cam(input_tensor=x, targets=list(targets) if targets is not None else None)
    finally:
        for module, training in modes.items():
            module.training = training
    return np.asarray(maps, dtype=np.float32)
