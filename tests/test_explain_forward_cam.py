"""CAM from the forward pass equals pytorch-grad-cam's Grad-CAM on a global-average-pool + linear head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cxrlab.errors import ConfigError
from cxrlab.explain import OutputTarget, compute_cam, forward_cam, forward_heatmap, probability_weighted_heatmap

torch.set_num_threads(1)
ATOL = 1e-4  # maps are in [0, 1]; the two paths differ only in float32 summation order


class GapNet(nn.Module):
    """features → global average pool → linear (with bias): the head Grad-CAM reduces to CAM on."""

    def __init__(self, n_out: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def inputs(n: int = 3, h: int = 24, w: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, h, w, generator=torch.Generator().manual_seed(seed))


def gradcam(model: nn.Module, x: torch.Tensor, targets) -> np.ndarray:
    return compute_cam(model.eval(), x, "gradcam", [model.features], targets)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_forward_cam_equals_gradcam_per_class(k):
    model, x = GapNet().eval(), inputs()
    with torch.no_grad():
        a = model.features(x)
    ours = forward_cam(a, model.fc.weight, k, size=x.shape[-2:])
    ref = gradcam(model, x, [OutputTarget(k)] * len(x))
    assert ours.shape == ref.shape == (3, 24, 32) and ours.dtype == np.float32
    assert ref.max() > 0.99  # a real map, not an empty one
    np.testing.assert_allclose(ours, ref, atol=ATOL)


def test_one_class_per_image_and_the_negative_of_a_single_logit():
    model, x = GapNet(n_out=4, seed=3).eval(), inputs(n=4, seed=5)
    with torch.no_grad():
        a = model.features(x)
    ks = [3, 0, 2, 1]
    np.testing.assert_allclose(forward_cam(a, model.fc.weight, ks, size=x.shape[-2:]),
                               gradcam(model, x, [OutputTarget(k) for k in ks]), atol=ATOL)
    single = GapNet(n_out=1, seed=4).eval()
    with torch.no_grad():
        a = single.features(x)
    for sign in (1.0, -1.0):
        np.testing.assert_allclose(forward_cam(a, single.fc.weight, 0, size=x.shape[-2:], sign=sign),
                                   gradcam(single, x, [OutputTarget(0, sign=sign)] * len(x)), atol=ATOL)


def test_forward_heatmap_equals_the_probability_weighted_gradcam_heatmap():
    model, x = GapNet(n_out=3, seed=7).eval(), inputs(seed=9)
    with torch.no_grad():
        a, probs = model.features(x), torch.softmax(model(x), 1).numpy()
    ref, ref_probs = probability_weighted_heatmap(model, x, "gradcam", [model.features])
    np.testing.assert_allclose(probs, ref_probs, atol=1e-6)
    np.testing.assert_allclose(forward_heatmap(a.numpy(), model.fc.weight.detach().numpy(), probs,
                                               size=x.shape[-2:]), ref, atol=ATOL)


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_registry_backbones_with_a_linear_head(backbone):
    from cxrlab.models import create_model

    net, _ = create_model(backbone, {"finding": 3}, weights="none")
    net.eval()
    model = net.as_classifier("finding")
    x = inputs(n=2, h=64, w=64, seed=2)
    with torch.no_grad():
        a = net.backbone.run_stages(net.normalize(x))  # what the global pool averages
    from cxrlab.models.backbones import get_backbone_entry
    target = get_backbone_entry(backbone).cam_target_layers(net)
    for k in range(3):
        ref = compute_cam(model, x, "gradcam", target, [OutputTarget(k)] * len(x))
        np.testing.assert_allclose(forward_cam(a, net.heads["finding"].weight, k, size=(64, 64)), ref, atol=ATOL)


def test_without_size_the_map_stays_at_feature_resolution_and_errors_are_clear():
    a = np.random.default_rng(0).random((2, 5, 4, 6), dtype=np.float32)
    w = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    m = forward_cam(a, w, 1)
    assert m.shape == (2, 4, 6) and m.min() >= 0 and m.max() == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(forward_cam(a, -np.abs(w), 0), 0)  # nothing positive: an all-zero map, no NaN
    with pytest.raises(ConfigError, match="does not fit 5 channels"):
        forward_cam(a, w[:, :4], 0)
    with pytest.raises(ConfigError, match="out of range for 3 classes"):
        forward_cam(a, w, 3)
    with pytest.raises(ConfigError, match="N×C×h×w"):
        forward_cam(a[0], w, 0)
