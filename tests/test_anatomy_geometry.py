"""Anatomy without training: post-processing, midline, zones, ROI schemes, biomarkers, metrics, architectures."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from cxrlab.anatomy import (
    ARCHITECTURES,
    ROI_SCHEMES,
    assign_lungs,
    create_segmentation_model,
    dice,
    estimate_midline,
    hd95,
    jaccard,
    lung_biomarkers,
    lung_zones,
    split_halves,
    split_lungs,
)
from cxrlab.anatomy.weights import lite0_weights_path
from cxrlab.data import schema
from cxrlab.data.phantom import render_sample, zone_map
from cxrlab.errors import ConfigError, InputError

R, L, H = schema.KEY_RIGHT_MASK, schema.KEY_LEFT_MASK, schema.KEY_HEART_MASK


@pytest.fixture(scope="module")
def sample() -> dict:
    return render_sample("normal", severity=0.0, size=128, seed=11)


def _rotate(mask: np.ndarray, degrees: float) -> np.ndarray:
    h, w = mask.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_NEAREST)


# --- metrics -----------------------------------------------------------------------------------------------
def test_dice_jaccard_hd95_known_values():
    a = np.zeros((20, 20), np.uint8)
    b = np.zeros((20, 20), np.uint8)
    a[0:10, 0:10] = 1
    b[0:10, 5:15] = 1
    assert dice(a, b) == pytest.approx(0.5)
    assert jaccard(a, b) == pytest.approx(50 / 150)
    assert hd95(a, a) == 0.0
    shifted = np.roll(a, 3, axis=1)
    assert hd95(a, shifted) == pytest.approx(3.0)
    assert hd95(a, shifted, spacing=0.5) == pytest.approx(1.5)
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0 and np.isnan(hd95(a, np.zeros_like(a)))


# --- post-processing: components, holes, anatomical sides ------------------------------------------------
def test_assign_lungs_cleans_and_corrects_swapped_channels(sample):
    r, l = sample[R].astype(np.float32), sample[L].astype(np.float32)
    noisy_r = r.copy()
    noisy_r[5:8, 5:8] = 1.0                         # a speck far away
    ys, xs = np.nonzero(r)
    noisy_r[ys.mean().astype(int), xs.mean().astype(int)] = 0.0  # a hole
    # the model swapped the channels: "right" output holds the image-right lung
    out_r, out_l = assign_lungs(l, noisy_r)
    assert np.array_equal(out_r, sample[R]) and np.array_equal(out_l, sample[L])
    # both lungs in one channel (e.g. a mirrored film): split by position
    out_r, out_l = assign_lungs(np.maximum(r, l), np.zeros_like(r))
    assert np.array_equal(out_r, sample[R]) and np.array_equal(out_l, sample[L])
    # one lung only, on the image's right: it is the patient's LEFT lung whatever channel says
    out_r, out_l = assign_lungs(l, np.zeros_like(l))
    assert not out_r.any() and np.array_equal(out_l, sample[L])


def test_split_lungs_by_position(sample):
    r, l = split_lungs(sample[schema.KEY_LUNG_MASK])
    assert np.array_equal(r, sample[R]) and np.array_equal(l, sample[L])


# --- midline ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("degrees", [0.0, 8.0, -12.0])
def test_midline_follows_rotation(sample, degrees):
    r, l = _rotate(sample[R], degrees), _rotate(sample[L], degrees)
    base = estimate_midline(sample[R], sample[L])
    line = estimate_midline(r, l)
    # cv2 turns the picture counter-clockwise for positive angles (y down): the line's bottom moves right
    assert line.angle_deg - base.angle_deg == pytest.approx(degrees, abs=2.0)
    right_side, left_side = line.sides(r.shape)
    assert (r.astype(bool) & right_side).sum() / r.sum() > 0.97
    assert (l.astype(bool) & left_side).sum() / l.sum() > 0.97


def test_split_halves(sample):
    line = estimate_midline(sample[R], sample[L])
    halves = split_halves(sample["image"], line)
    assert set(halves) == {"patient_right", "patient_left"}
    w = sample["image"].shape[1]
    assert halves["patient_right"].shape[1] + halves["patient_left"].shape[1] >= w
    assert halves["patient_right"].shape[0] == sample["image"].shape[0]
    mirrored = split_halves(sample["image"], line, mirror_left=True)["patient_left"]
    assert np.array_equal(mirrored, halves["patient_left"][:, ::-1])
    with pytest.raises(InputError, match="patient_left"):
        estimate_midline(sample[R], np.zeros_like(sample[L]))


# --- zones ---------------------------------------------------------------------------------------------------
def test_equal_height_zones_match_phantom_truth(sample):
    zones = lung_zones(sample[R], sample[L], "equal_height")
    for lung, names in ((sample[R], "ABC"), (sample[L], "DEF")):
        truth = zone_map(lung)
        for band, name in enumerate(names):
            assert np.array_equal(zones[name].astype(bool), truth == band), name
    # the zones partition each lung
    assert np.array_equal(zones["A"] | zones["B"] | zones["C"], sample[R])
    assert np.array_equal(zones["D"] | zones["E"] | zones["F"], sample[L])


def test_equal_area_zones(sample):
    zones = lung_zones(sample[R], sample[L], "equal_area")
    for names, lung in (("ABC", sample[R]), ("DEF", sample[L])):
        areas = np.array([zones[n].sum() for n in names])
        assert areas.sum() == lung.sum()
        assert np.abs(areas - lung.sum() / 3).max() <= lung.sum(axis=1).max() + 1
        # upper zone lies above the middle, middle above the lower
        tops = [np.nonzero(zones[n])[0].mean() for n in names]
        assert tops[0] < tops[1] < tops[2]
    with pytest.raises(InputError, match="strategy"):
        lung_zones(sample[R], sample[L], "thirds")


# --- ROI schemes --------------------------------------------------------------------------------------------
def test_roi_schemes(sample):
    assert set(ROI_SCHEMES.list()) == {"none", "lung", "midline", "lungs", "image+mask"}
    assert ROI_SCHEMES.create("none")(sample) == [sample]
    right, left = ROI_SCHEMES.create("lung", margin=0.0)(sample)
    assert right["meta"]["side"] == "patient_right" and left["meta"]["side"] == "patient_left"
    ys, xs = np.nonzero(sample[R])
    assert right["image"].shape == (np.ptp(ys) + 1, np.ptp(xs) + 1)
    assert (right["image"][right[R] == 0] == 0).all()          # outside the lung is blanked
    halves = ROI_SCHEMES.create("midline")(sample)
    assert [h["meta"]["side"] for h in halves] == ["patient_right", "patient_left"]
    (both,) = ROI_SCHEMES.create("lungs")(sample)
    assert (both["image"][both[schema.KEY_LUNG_MASK] == 0] == 0).all()
    (two,) = ROI_SCHEMES.create("image+mask")(sample)
    assert two["image"].shape == (2, 128, 128)
    assert np.array_equal(two["image"][1], (sample[R] | sample[L]).astype(np.float32))
    assert ROI_SCHEMES.meta("image+mask")["in_channels"] == 2
    bare = {"image": sample["image"], "meta": {"image": "x.png"}}
    with pytest.raises(InputError, match="x.png.*lung model"):
        ROI_SCHEMES.create("lung")(bare)


# --- biomarkers ------------------------------------------------------------------------------------------------
def test_biomarkers_and_flags(sample):
    bio = lung_biomarkers(sample["image"], sample[R], sample[L], sample[H])
    assert bio["right_lung_area_px"] == sample[R].sum() and bio["left_lung_area_px"] == sample[L].sum()
    assert bio["right_lung_mean"] == pytest.approx(sample["image"][sample[R] > 0].mean(), rel=1e-5)
    assert bio["plausible"] and bio["flags"] == []
    heart_cols = np.flatnonzero(sample[H].any(axis=0))
    lung_cols = np.flatnonzero((sample[R] | sample[L]).any(axis=0))
    assert bio["cardiothoracic_ratio"] == pytest.approx((np.ptp(heart_cols) + 1) / (np.ptp(lung_cols) + 1), rel=0.02)
    assert 0.3 < bio["cardiothoracic_ratio"] < 0.7
    missing = lung_biomarkers(sample["image"], sample[R], np.zeros_like(sample[L]))
    assert "left_lung_missing" in missing["flags"] and not missing["plausible"]
    assert "cardiothoracic_ratio" not in missing
    tiny = np.zeros_like(sample[R])
    tiny[60:63, 30:33] = 1
    assert "right_lung_too_small" in lung_biomarkers(sample["image"], tiny, sample[L])["flags"]
    assert "lungs_overlap" in lung_biomarkers(sample["image"], sample[R] | sample[L], sample[L])["flags"]
    with pytest.raises(InputError, match="heart_mask"):
        lung_biomarkers(sample["image"], sample[R], sample[L], np.zeros((5, 5), np.uint8))


# --- architectures and weights ---------------------------------------------------------------------------------
def test_nine_architectures_one_channel():
    assert set(ARCHITECTURES.list()) == {"unet", "unetplusplus", "deeplabv3", "deeplabv3plus", "fpn", "manet",
                                         "linknet", "pspnet", "pan"}
    for arch in ARCHITECTURES.list():
        size = 128 if arch == "pan" else 64  # PAN's pyramid pooling needs >= 4 px at stride 32
        model = create_segmentation_model(arch, "efficientnet_lite0", "none", in_channels=1, classes=3).eval()
        with torch.no_grad():
            assert model(torch.rand(1, 1, size, size)).shape == (1, 3, size, size), arch


def test_resnet_encoders_and_errors():
    for enc in ("resnet18", "resnet34"):
        model = create_segmentation_model("linknet", enc, "none", in_channels=1, classes=2).eval()
        with torch.no_grad():
            assert model(torch.rand(1, 1, 64, 64)).shape == (1, 2, 64, 64)
    with pytest.raises(ConfigError, match="no weights 'imagenet'"):
        create_segmentation_model("unet", "resnet18", "imagenet")
    model = create_segmentation_model("unet", "efficientnet_lite0", "none", in_channels=1, classes=3)
    with pytest.raises(ConfigError, match="expects input N×1×H×W"):
        model(torch.rand(1, 2, 64, 64))


def test_lite0_imagenet_weights_mapped_onto_one_channel_stem():
    raw = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    model = create_segmentation_model("unet", "efficientnet_lite0", "imagenet", in_channels=2, classes=3)
    enc = model.net.encoder.model
    stem = enc.conv_stem.weight.detach()
    assert torch.allclose(stem[:, 0], raw["_conv_stem.weight"].sum(dim=1))
    assert torch.count_nonzero(stem[:, 1]) == 0
    assert torch.equal(enc.blocks[1][1].conv_dw.weight, raw["_blocks.2._depthwise_conv.weight"])
    assert torch.equal(enc.blocks[6][0].bn3.running_var, raw["_blocks.15._bn2.running_var"])


@pytest.mark.parametrize("seed", range(20))
def test_fill_holes_matches_scipy(seed):
    from scipy import ndimage

    from cxrlab.anatomy.postprocess import fill_holes

    rng = np.random.default_rng(seed)
    mask = (rng.random((48, 64)) < rng.uniform(0.3, 0.8)).astype(np.uint8)
    expected = ndimage.binary_fill_holes(mask.astype(bool)).astype(np.uint8)
    assert np.array_equal(fill_holes(mask), expected)


@pytest.mark.parametrize("seed", range(10))
def test_two_separate_lungs_match_a_scipy_reference(seed):
    """The two-lung path (labels and centroids from one connected-component pass, no second hole fill) equals
    a plain reference: fill the union, label 8-connected, keep the two largest, order by mean column."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    probs = [cv2.GaussianBlur(rng.random((40, 56)).astype(np.float32), (5, 5), 0) for _ in range(2)]
    for p in probs:  # two blobs far apart, so the two-component branch is taken; noise gives holes and islands
        p[:, 24:32] = 0.0
        p[8:32, 4:20] += 0.5
        p[8:32, 36:52] += 0.5
    right, left = assign_lungs(probs[0], probs[1], 0.6)
    union = ndimage.binary_fill_holes((probs[0] >= 0.6) | (probs[1] >= 0.6))
    labels, n = ndimage.label(union, structure=np.ones((3, 3)))
    areas = np.bincount(labels.ravel())[1:]
    a, b = (labels == i + 1 for i in np.argsort(areas)[::-1][:2])
    if np.nonzero(a)[1].mean() > np.nonzero(b)[1].mean():
        a, b = b, a
    assert np.array_equal(right, a.astype(np.uint8)) and np.array_equal(left, b.astype(np.uint8))
