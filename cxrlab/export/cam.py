"""Export a classifier whose heatmap comes out of the forward pass: the last feature map as a second output.

For a ``CxrNet`` whose backbone pools globally by average and whose head is one ``nn.Linear``, Grad-CAM equals
CAM (``cxrlab.explain.forward_cam``), so the graph only has to return the feature map the pool averages:

>>> weight = forward_cam_weight(net, "finding", sample, layers)  # None: keep Grad-CAM's backward pass
>>> export_module(CamFeatureModel(net), sample, "model_cam.onnx")  # outputs: the heads + "cam_features"
>>> maps = forward_cam(outputs["cam_features"], weight, k, size=(H, W))

The service's diagnosis stage runs this model on its backend whenever ``forward_cam_weight`` finds the head
eligible (``cxrlab.serve.stages``; ``cxrlab export`` then writes ``model_cam.onnx``), through a
:class:`FeatureTap` that keeps the feature map of the last batch and hands the heads on unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

CAM_OUTPUT = "cam_features"
CAM_ONNX = "model_cam.onnx"  # the run's export of CamFeatureModel, next to model.onnx


class CamFeatureModel(nn.Module):
    """``{head: logits, ..., "cam_features": N×C×h×w}`` of a ``CxrNet`` in one forward pass (the same heads as
    ``net(x)``: the backbone runs once, its last feature map is both pooled and returned)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.net.backbone.run_stages(self.net.normalize(x))
        out = self.net.forward_heads(self.net.backbone.pool(features))
        return {**out, CAM_OUTPUT: features}


class FeatureTap(nn.Module):
    """Wraps a backend module running :class:`CamFeatureModel`: returns the heads only (what the run's task
    decoding expects) and keeps the last batch's feature map in ``features``."""

    def __init__(self, engine: nn.Module):
        super().__init__()
        self.engine = engine
        self.features: torch.Tensor | None = None

    @property
    def seconds(self) -> float:  # time spent in the network (the backend wrapper's clock)
        return self.engine.seconds

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = dict(self.engine(x))
        self.features = out.pop(CAM_OUTPUT)
        return out


@torch.no_grad()
def forward_cam_weight(net: nn.Module, head: str, example: torch.Tensor,
                       target_layers: list[nn.Module]) -> torch.Tensor | None:
    """The ``K×C`` weight of ``head`` when Grad-CAM on ``target_layers`` reduces to CAM for it, else None.

    Checked on ``example`` rather than by class names: the head is one ``nn.Linear``; the backbone's pool is a
    plain global average (its output equals the feature map's spatial mean, so no norm or projection sits
    after the pool); and the one Grad-CAM target layer outputs exactly the feature map the pool averages.
    """
    backbone, heads = getattr(net, "backbone", None), getattr(net, "heads", None)
    if backbone is None or heads is None or head not in heads or not isinstance(heads[head], nn.Linear) \
            or len(target_layers) != 1:
        return None
    modes = {m: m.training for m in net.modules()}
    net.eval()
    seen: list[torch.Tensor] = []
    handle = target_layers[0].register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        features = backbone.run_stages(net.normalize(example))
        if features.ndim != 4:
            return None
        pooled = backbone.pool(features)
        mean = features.mean(dim=(2, 3))
        if pooled.shape != mean.shape or not torch.allclose(pooled, mean, rtol=1e-5, atol=1e-6):
            return None
        if len(seen) != 1 or not isinstance(seen[0], torch.Tensor) or not torch.equal(seen[0], features):
            return None
        return heads[head].weight.detach().clone()
    finally:
        handle.remove()
        for module, training in modes.items():
            module.training = training
