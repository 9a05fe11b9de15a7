"""CAM registry over pytorch-grad-cam, the probability-weighted heatmap, HCS and overlays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cxrlab.errors import ConfigError, InputError
from cxrlab.explain import (
    CAM_METHODS,
    HCS_DEFINITIONS,
    OutputTarget,
    compute_cam,
    heatmap,
    heatmap_concordance,
    lung_fraction,
    macro_hcs,
    overlay,
    probability_weighted_heatmap,
    resolve_layer,
    target_layers_for,
)
from cxrlab.explain.heatmap import class_maps, rescale

torch.set_num_threads(1)  # the CI box is shared: one thread is faster than two contended ones


def tiny_cnn(n_out: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, n_out)).eval()


class TwoHeads(nn.Module):
    """A per-lung model: logits N x 2 (patient right, left) x K."""

    def __init__(self):
        super().__init__()
        self.body = tiny_cnn(6)

    def forward(self, x):
        return self.body(x).view(-1, 2, 3)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(getattr(m, "_forward_pre_hooks", {}))
               for m in model.modules())


@pytest.mark.parametrize("method", CAM_METHODS.list())
def test_every_cam_method_runs_and_releases_hooks(method):
    model = tiny_cnn()
    x = torch.rand(2, 1, 32, 32)
    layers = target_layers_for(model, x[:1])
    maps = compute_cam(model, x, method, layers, [OutputTarget(1)] * 2)
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    assert _hooks(model) == 0  # the context manager removed every hook


def test_required_methods_are_registered():
    assert {"gradcam", "gradcam++", "xgradcam", "eigencam", "scorecam"} <= set(CAM_METHODS.list())
    with pytest.raises(ConfigError, match="known"):
        CAM_METHODS.get("nocam")


def test_gradcam_on_every_registered_backbone():
    from cxrlab.models import create_model, get_backbone_entry, list_backbones

    names = list_backbones()
    assert names, "the backbone registry is empty"
    for name in names:
        model, _ = create_model(name, {"h": 2}, in_chans=1, weights="none")  # 64 px: pasa_cnn6 pools 6 times
        model.eval()
        layers = get_backbone_entry(name).cam_target_layers(model)
        maps = compute_cam(model.as_classifier("h"), torch.rand(1, 1, 64, 64), "gradcam", layers, [OutputTarget(1)])
        assert maps.shape == (1, 64, 64) and np.isfinite(maps).all(), name
        assert _hooks(model) == 0, name


def test_frozen_backbone_still_gets_gradients():
    model = tiny_cnn()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(1, 1, 32, 32)
    maps = compute_cam(model, x, "gradcam", target_layers_for(model, x), [OutputTarget(0)])
    assert maps.std() > 0


def test_layer_resolution():
    model = tiny_cnn()
    assert resolve_layer(model, "3") is model[3] and resolve_layer(model, "-4") is model[4]
    assert target_layers_for(model, torch.rand(1, 1, 32, 32))[0] is model[4]  # last spatial map before pooling
    with pytest.raises(ConfigError, match="no submodule"):
        resolve_layer(model, "layer9")


def test_probability_weighted_heatmap_is_the_weighted_class_average():
    model = tiny_cnn()
    x = torch.rand(3, 1, 32, 32)
    layers = target_layers_for(model, x[:1])
    heat, probs = probability_weighted_heatmap(model, x, "gradcam", layers)
    with torch.no_grad():
        expected_p = torch.softmax(model(x), 1).numpy()
    np.testing.assert_allclose(probs, expected_p, rtol=1e-5)
    maps = class_maps(model, x, "gradcam", layers, 3)
    np.testing.assert_allclose(heat, rescale(np.einsum("nk,knhw->nhw", expected_p, maps)), atol=1e-5)
    assert heat.max() == pytest.approx(1.0)


def test_per_lung_heatmap_averages_both_heads():
    model = TwoHeads().eval()
    x = torch.rand(2, 1, 32, 32)
    layers = target_layers_for(model, x[:1])
    heat, probs = heatmap(model, x, "gradcam", layers)
    assert probs.shape == (2, 2, 3)
    right, _ = probability_weighted_heatmap(model, x, "gradcam", layers, head=0)
    left, _ = probability_weighted_heatmap(model, x, "gradcam", layers, head=1)
    np.testing.assert_allclose(heat, rescale((right + left) / 2), atol=1e-5)


def test_single_logit_model_gets_two_class_weights():
    model = tiny_cnn(1)
    x = torch.rand(2, 1, 32, 32)
    _, probs = heatmap(model, x, "gradcam", target_layers_for(model, x[:1]))
    with torch.no_grad():
        p = torch.sigmoid(model(x))[:, 0].numpy()
    np.testing.assert_allclose(probs, np.stack([1 - p, p], 1), rtol=1e-5)


# --- HCS ------------------------------------------------------------------------------------------------
MASK = np.zeros((4, 4), np.uint8)
MASK[:, :2] = 1  # left half is "lung"
HCS_CASES = [
    # heatmap, definition, threshold, expected
    # nonzero (the paper's): non-zero pixels inside the lungs / all non-zero pixels, whatever their value
    (np.array([[1, 0, 0, 0]] * 4, float), "nonzero", 0.5, 1.0),
    (np.array([[0, 0, 1, 1]] * 4, float), "nonzero", 0.5, 0.0),
    (np.array([[1, 0, 1, 0]] * 4, float), "nonzero", 0.5, 0.5),
    (np.array([[0.6, 0, 1.0, 0]] * 4, float), "nonzero", 0.5, 0.5),  # counted, not weighed
    (np.array([[1.0, 0, 0.4, 0.4]] * 4, float), "nonzero", 0.5, 1 / 3),  # the faint tail counts; threshold unused
    (np.array([[0.01, 0.02, 0, 1.0]] * 4, float), "nonzero", 0.9, 2 / 3),
    # mass: heatmap mass at or above the threshold inside the lungs / all such mass
    (np.array([[1, 0, 0, 0]] * 4, float), "mass", 0.5, 1.0),
    (np.array([[0, 0, 1, 1]] * 4, float), "mass", 0.5, 0.0),
    (np.array([[1, 0, 1, 0]] * 4, float), "mass", 0.5, 0.5),
    (np.array([[0.6, 0, 1.0, 0]] * 4, float), "mass", 0.5, 0.6 / 1.6),  # mass-weighted, not pixel-counted
    (np.array([[1.0, 0, 0.4, 0.4]] * 4, float), "mass", 0.5, 1.0),  # below-threshold mass is ignored
    (np.array([[1.0, 0, 0.4, 0.4]] * 4, float), "mass", 0.0, 1.0 / 1.8),
]


@pytest.mark.parametrize("heat,definition,threshold,expected", HCS_CASES)
def test_hcs_hand_values(heat, definition, threshold, expected):
    assert heatmap_concordance(heat, MASK, threshold, definition) == pytest.approx(expected)


def test_hcs_default_is_the_papers_pixel_share():
    heat = np.array([[1.0, 0, 0.4, 0.4]] * 4, float)
    assert heatmap_concordance(heat, MASK) == pytest.approx(1 / 3)
    assert set(HCS_DEFINITIONS.list()) == {"nonzero", "mass"}
    with pytest.raises(ConfigError, match="HCS definition.*mass.*nonzero"):
        heatmap_concordance(heat, MASK, definition="peak")


@pytest.mark.parametrize("definition", ["nonzero", "mass"])
def test_hcs_edge_cases(definition):
    assert math.isnan(heatmap_concordance(np.zeros((4, 4)), MASK, definition=definition))  # nothing salient
    big = np.kron(MASK, np.ones((8, 8), np.uint8))  # 32x32 mask against a 4x4 heatmap: resized, same answer
    assert heatmap_concordance(np.array([[1, 0, 1, 0]] * 4, float), big, definition=definition) == pytest.approx(0.5)
    assert lung_fraction(MASK) == 0.5
    with pytest.raises(InputError):
        heatmap_concordance(np.zeros((2, 4, 4)), MASK, definition=definition)
    with pytest.raises(InputError, match="threshold"):
        heatmap_concordance(np.zeros((4, 4)), MASK, 1.5, definition)


@pytest.mark.parametrize("roi", ["none", "lung", "midline", "lungs", "image+mask"])
def test_hcs_is_defined_for_every_roi(roi):
    """The lungs travel through every ROI scheme into the model's frame (the midline halves included), so HCS
    is never NaN for want of a mask: a heatmap that is 1 on the lungs scores 1 under both definitions."""
    from cxrlab.data.phantom import render_sample
    from cxrlab.recipes.schema import InputSpec
    from cxrlab.train.inputs import InputPipeline

    sample = render_sample("covid19", severity=0.5, size=128, seed=3)
    prepared = InputPipeline(InputSpec(size=64, roi=roi)).prepare_with_lungs(sample)
    assert len(prepared) == (2 if roi in ("lung", "midline") else 1)
    for image, lungs, _ in prepared:
        assert lungs is not None and lungs.shape == image.shape[-2:] and 0 < lungs.mean() < 1
        on_lungs = lungs.astype(float)
        everywhere = np.ones_like(on_lungs)
        for definition in ("nonzero", "mass"):
            assert heatmap_concordance(on_lungs, lungs, definition=definition) == 1.0
            assert heatmap_concordance(everywhere, lungs, definition=definition) == pytest.approx(lung_fraction(lungs))


def test_midline_halves_carry_their_own_lung():
    from cxrlab.anatomy import ROI_SCHEMES
    from cxrlab.data import schema
    from cxrlab.data.phantom import render_sample

    sample = render_sample("normal", severity=0.0, size=128, seed=11)
    right, left = ROI_SCHEMES.create("midline")(sample)
    R, L = schema.KEY_RIGHT_MASK, schema.KEY_LEFT_MASK
    for half in (right, left):
        assert half[R].shape == half[L].shape == half["image"].shape
    # each half holds (almost) all of its own lung and (almost) none of the other
    assert right[R].sum() > 0.95 * sample[R].sum() and right[L].sum() < 0.05 * sample[L].sum()
    assert left[L].sum() > 0.95 * sample[L].sum() and left[R].sum() < 0.05 * sample[R].sum()


def test_macro_hcs_weighs_classes_equally():
    res = macro_hcs([1.0, 1.0, 1.0, 0.0, float("nan")], ["a", "a", "a", "b", "b"])
    assert res["per_class"] == {"a": 1.0, "b": 0.0} and res["macro"] == 0.5 and res["n"] == {"a": 3, "b": 1}


def test_overlay_draws_heatmap_and_lung_contour():
    image = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    heat = np.zeros((64, 64), np.float32)
    heat[20:40, 20:40] = 1
    mask = np.zeros((64, 64), np.uint8)
    mask[10:50, 5:30] = 1
    rgb = overlay(image, heat, mask)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert (rgb == [0, 255, 0]).all(axis=2).sum() > 50  # contour pixels
    assert rgb[30, 35, 0] > rgb[30, 35, 2]  # hot (red) where the heatmap is 1, outside the contour
    assert rgb[55, 55, 2] > rgb[55, 55, 0]  # cold (blue) where it is 0


def test_cam_restores_each_module_mode():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2)).eval()
    wrapper = nn.Sequential(net)  # a fresh wrapper starts in training mode
    assert wrapper.training and not net[1].training
    x = torch.rand(2, 1, 16, 16)
    compute_cam(wrapper, x, "gradcam", [net[0]], [OutputTarget(0)] * 2)
    assert wrapper.training and not net.training and not net[1].training  # BatchNorm stays in eval mode


@pytest.mark.parametrize("decision,expected", [("mode", 3), ("median", 2)])
def test_explained_grade_follows_the_tasks_decision_rule(monkeypatch, decision, expected):
    """The explain entry's ``pred`` is the grade ``predict`` writes: an ordinal task read by its median
    (probabilities 0.35 / 0.05 / 0.2 / 0.4: most probable grade 3, median grade 2) must not be shown as 3."""
    from types import SimpleNamespace

    import cxrlab.explain.run as run

    image, lungs = np.zeros((3, 8, 8), np.float32), np.ones((8, 8), bool)
    probs = np.array([[0.35, 0.05, 0.2, 0.4]])
    monkeypatch.setattr(run, "prepare_with_mask", lambda em, row: [(image, lungs)])
    monkeypatch.setattr(run, "heads_heatmap", lambda em, x, heads, method: (np.ones((len(x), 8, 8)), probs))
    em = SimpleNamespace(pipeline=SimpleNamespace(patches=None),
                         heads=lambda: {"opacity": {"task": "opacity", "decision": decision}})
    entry = run.explain_rows(em, [{"image": "a.png"}], "opacity", with_overlay=False)[0]
    assert entry["pred"] == expected
