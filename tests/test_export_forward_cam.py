"""ONNX graph with the last feature map as a second output: CAM from onnxruntime's forward pass equals the
torch Grad-CAM map (backward pass) on GAP + linear heads; other heads are recognised and refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cxrlab.explain import OutputTarget, compute_cam, forward_cam
from cxrlab.export import export_module
from cxrlab.export.cam import CAM_OUTPUT, CamFeatureModel, forward_cam_weight
from cxrlab.models import create_model
from cxrlab.models.backbones import get_backbone_entry

ort = pytest.importorskip("onnxruntime")
torch.set_num_threads(1)


def classifier(backbone: str, head: nn.Module | int = 3):
    net, _ = create_model(backbone, {"finding": head}, weights="none")
    return net.eval(), get_backbone_entry(backbone).cam_target_layers(net)


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_onnx_forward_cam_equals_torch_gradcam(backbone, tmp_path):
    net, layers = classifier(backbone)
    x = torch.rand(3, 1, 96, 96, generator=torch.Generator().manual_seed(0))
    weight = forward_cam_weight(net, "finding", x[:1], layers)
    assert weight is not None and weight.shape == (3, net.backbone.num_features)
    path = export_module(CamFeatureModel(net), x[:1], tmp_path / "model_cam.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == ["finding", CAM_OUTPUT]
    logits, features = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        ref_logits = net(x)["finding"].numpy()
    np.testing.assert_allclose(logits, ref_logits, atol=1e-3)  # the heads are unchanged
    peaks = []
    for k in range(3):
        ours = forward_cam(features, weight, k, size=(96, 96))
        ref = compute_cam(net.as_classifier("finding"), x, "gradcam", layers, [OutputTarget(k)] * len(x))
        peaks.append(ref.max())  # a class whose evidence is negative everywhere has an all-zero map in both
        np.testing.assert_allclose(ours, ref, atol=2e-3)
    assert max(peaks) > 0.99
    # the predicted class per image, as the service's heatmap uses it
    top = ref_logits.argmax(1)
    np.testing.assert_allclose(forward_cam(features, weight, top, size=(96, 96)),
                               compute_cam(net.as_classifier("finding"), x, "gradcam", layers,
                                           [OutputTarget(int(k)) for k in top]), atol=2e-3)


def test_heads_where_gradcam_is_not_cam_are_refused():
    x = torch.rand(1, 1, 64, 64)
    mlp, layers = classifier("resnet18", nn.Sequential(nn.Linear(512, 16), nn.ReLU(), nn.Linear(16, 3)))
    assert forward_cam_weight(mlp, "finding", x, layers) is None  # non-linear head
    net, layers = classifier("resnet18")
    assert forward_cam_weight(net, "other", x, layers) is None  # no such head
    assert forward_cam_weight(net, "finding", x, [net.backbone.net.layer3]) is None  # not the pooled map
    net.backbone.pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(1))
    assert forward_cam_weight(net, "finding", x, layers) is None  # not an average pool


def test_the_check_leaves_every_module_mode_as_it_was():
    net, layers = classifier("resnet18")
    net.train()
    net.backbone.net.bn1.eval()
    forward_cam_weight(net, "finding", torch.rand(1, 1, 64, 64), layers)
    assert net.training and not net.backbone.net.bn1.training and net.backbone.net.layer1.training
