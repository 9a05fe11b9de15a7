"""Dictionary transforms on phantom samples: image and masks move together, left/right under flips, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrlab.data import schema
from cxrlab.data.phantom import render_sample
from cxrlab.errors import ConfigError, InputError
from cxrlab.transforms import (
    TRANSFORMS,
    CLAHEd,
    Compose,
    CropToMaskd,
    HFlipd,
    MinMaxd,
    Percentiled,
    RandAffined,
    RandGammad,
    RandHFlipd,
    Resized,
    ResizePadd,
    ToTensord,
    UnsharpMaskd,
    ZScored,
    build_transforms,
    clahe,
    mask_keys,
    parse_histeq,
    undo_resize_pad,
)

R, L = schema.KEY_RIGHT_MASK, schema.KEY_LEFT_MASK


@pytest.fixture(scope="module")
def sample() -> dict:
    return render_sample("covid19", severity=0.6, size=96, seed=3)


def _cx(mask: np.ndarray) -> float:
    return float(np.nonzero(mask)[1].mean())


def _rect_sample(h: int = 60, w: int = 90) -> dict:
    image = np.zeros((h, w), np.float32)
    image[10:30, 20:50] = 1.0
    mask = (image > 0).astype(np.uint8)
    return {"image": image, schema.KEY_LUNG_MASK: mask, "meta": {"image": "rect.png"}}


# --- every geometric transform keeps masks aligned with the image --------------------------------------------
GEOMETRIC = [
    ("resize", Resized((64, 48))),
    ("resize_pad", ResizePadd(64)),
    ("crop_to_mask", CropToMaskd(schema.KEY_LUNG_MASK, margin=0.1)),
    ("hflip", HFlipd()),
    ("rand_affine", RandAffined(rotate=15, scale=(0.8, 1.2), translate=0.1, aspect=0.1)),
]


@pytest.mark.parametrize("name,t", GEOMETRIC, ids=[g[0] for g in GEOMETRIC])
def test_geometric_transforms_move_masks_with_image(name, t, sample):
    out = t(sample, np.random.default_rng(0))
    h, w = out["image"].shape
    for key in mask_keys(out):
        assert out[key].shape == (h, w), key
        assert out[key].dtype == np.uint8 and set(np.unique(out[key])) <= {0, 1}, key
    # the rectangle's mask must still cover exactly the bright pixels
    rect = t(_rect_sample(), np.random.default_rng(1))
    bright = rect["image"] > 0.5
    agree = (bright == rect[schema.KEY_LUNG_MASK].astype(bool)).mean()
    assert agree > 0.97, agree
    assert "applied" in out["meta"] and out["meta"]["applied"][-1]["name"] in {name, "affine"}


def test_resize_pad_keeps_aspect_and_inverts():
    s = _rect_sample(60, 90)
    out = ResizePadd(45)(s)
    assert out["image"].shape == (45, 45)
    rows = np.flatnonzero(out["image"].any(axis=1) | (out[schema.KEY_LUNG_MASK].any(axis=1)))
    # 60x90 scaled by 0.5 -> 30x45 canvas content centred: rows 7..37, the rectangle rows 5..15 of it
    params = out["meta"]["applied"][-1]
    assert params["resized"] == (30, 45) and params["pad_top"] == 7
    assert rows.min() >= 7
    back = undo_resize_pad(out[schema.KEY_LUNG_MASK], params)
    assert back.shape == (60, 90)
    assert (back == s[schema.KEY_LUNG_MASK]).mean() > 0.97


def test_crop_to_mask_box_and_margin():
    s = _rect_sample()
    out = CropToMaskd(schema.KEY_LUNG_MASK, margin=0.0)(s)
    assert out["image"].shape == (20, 30) and out[schema.KEY_LUNG_MASK].all()
    out = CropToMaskd(schema.KEY_LUNG_MASK, margin=0.5)(s)
    assert out["image"].shape == (40, 60)


def test_crop_to_empty_mask_is_a_clear_error():
    s = _rect_sample()
    s[schema.KEY_LUNG_MASK] = np.zeros_like(s[schema.KEY_LUNG_MASK])
    with pytest.raises(InputError, match="rect.png.*lung_mask.*empty"):
        CropToMaskd(schema.KEY_LUNG_MASK)(s)


def test_wrong_size_mask_is_a_clear_error(sample):
    bad = dict(sample)
    bad[R] = np.zeros((10, 10), np.uint8)
    with pytest.raises(InputError, match="patient_right_mask"):
        ResizePadd(64)(bad)


# --- left/right conventions --------------------------------------------------------------------------------
def test_phantom_convention_patient_right_on_image_left(sample):
    assert _cx(sample[R]) < sample["image"].shape[1] / 2 < _cx(sample[L])


def test_hflip_swaps_patient_sides_and_side_labels(sample):
    labels = {"opacity_right": 2, "opacity_left": 0, "brixia_A": 3, "brixia_D": 1, "brixia_global": 4,
              "finding": "covid19"}
    s = {**sample, "labels": labels}
    out = HFlipd()(s)
    w = sample["image"].shape[1]
    # the mask now called patient-right is the mirror of the old patient-left mask, and lies on image-left
    assert np.array_equal(out[R], sample[L][:, ::-1])
    assert np.array_equal(out[L], sample[R][:, ::-1])
    assert _cx(out[R]) < w / 2 < _cx(out[L])
    assert np.array_equal(out["image"], sample["image"][:, ::-1])
    assert out["labels"]["opacity_right"] == 0 and out["labels"]["opacity_left"] == 2
    assert out["labels"]["brixia_A"] == 1 and out["labels"]["brixia_D"] == 3
    assert out["labels"]["brixia_global"] == 4 and out["labels"]["finding"] == "covid19"
    # twice = identity
    twice = HFlipd()(out)
    assert np.array_equal(twice[R], sample[R]) and twice["labels"] == labels


def test_rand_hflip_probability_and_swap(sample):
    flipped = RandHFlipd(p=1.0)(sample, np.random.default_rng(0))
    assert np.array_equal(flipped[R], sample[L][:, ::-1])
    kept = RandHFlipd(p=0.0)(sample, np.random.default_rng(0))
    assert np.array_equal(kept[R], sample[R])


# --- intensity --------------------------------------------------------------------------------------------
def test_minmax_percentile_zscore(sample):
    s = {**sample, "image": sample["image"] * 0.5 + 0.2}
    mm = MinMaxd()(s)["image"]
    assert mm.min() == pytest.approx(0) and mm.max() == pytest.approx(1)
    pc = Percentiled(5, 95)(s)["image"]
    assert pc.min() == 0 and pc.max() == 1 and 0.05 < (pc == 0).mean() < 0.2
    z = ZScored()(s)["image"]
    assert abs(z.mean()) < 1e-4 and z.std() == pytest.approx(1, abs=1e-3)
    zl = ZScored(mask_key=schema.KEY_LUNG_MASK)(s)["image"]
    lung = s[schema.KEY_LUNG_MASK].astype(bool)
    assert abs(zl[lung].mean()) < 1e-4 and zl[lung].std() == pytest.approx(1, abs=1e-3)
    # masks untouched by intensity transforms
    assert np.array_equal(ZScored()(s)[R], s[R])


def test_clahe_convention_and_real_intensity_range(sample):
    assert parse_histeq("True_2_8") == (2.0, 8)
    assert parse_histeq("False") is None
    with pytest.raises(ConfigError):
        parse_histeq("True_x_8")
    image = sample["image"]
    assert image.dtype == np.float32 and image.max() <= 1.0
    out = CLAHEd("True_2_8")(sample)["image"]
    # a [0,1] float image must NOT collapse to 0/1 (the published code's uint8 cast did exactly that)
    assert out.dtype == np.float32 and len(np.unique(out)) > 100
    assert ((out > 0.02) & (out < 0.98)).mean() > 0.5
    assert out.min() >= image.min() - 1e-6 and out.max() <= image.max() + 1e-6
    # it equalises: the intensity spread inside the lungs grows
    lung = sample[schema.KEY_LUNG_MASK].astype(bool)
    assert out[lung].std() > image[lung].std()
    # clip limit cl*gs*gs: a larger cl changes the result
    assert not np.allclose(clahe(image, 0.05, 4), clahe(image, 2.0, 4))
    assert np.array_equal(CLAHEd("False")(sample)["image"], image)


def test_unsharp_sharpens_edges(sample):
    s = _rect_sample()
    s["image"] = s["image"] * 0.5 + 0.25
    out = UnsharpMaskd(sigma=2, amount=1)(s)["image"]
    # overshoot on both sides of each edge (the halo that makes edges look sharper), flat areas unchanged
    assert out.max() > 0.8 and out.min() < 0.2
    assert out[20, 35] == pytest.approx(0.75, abs=1e-3) and out[50, 80] == pytest.approx(0.25, abs=1e-3)
    assert np.abs(np.diff(out, axis=1)).max() > np.abs(np.diff(s["image"], axis=1)).max()
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_to_tensor(sample):
    out = ToTensord()(sample)
    assert isinstance(out["image"], torch.Tensor) and out["image"].shape == (1, 96, 96)
    assert out["image"].dtype == torch.float32 and out[R].dtype == torch.uint8


# --- seeds, registry, multi-channel images ---------------------------------------------------------------
def _pipeline(seed: int) -> Compose:
    return Compose([RandAffined(rotate=20, translate=0.1), RandHFlipd(0.5), RandGammad(0.4, p=1.0)], seed=seed)


def test_compose_is_deterministic_under_a_seed(sample):
    a = [_pipeline(7)(sample) for _ in range(1)][0]
    b = _pipeline(7)(sample)
    c = _pipeline(8)(sample)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a[R], b[R])
    assert not np.array_equal(a["image"], c["image"])
    # per-call generators give the same result regardless of the pipeline's own state
    p = _pipeline(0)
    x = p(sample, np.random.default_rng(42))
    p(sample)
    y = p(sample, np.random.default_rng(42))
    assert np.array_equal(x["image"], y["image"])


def test_build_from_recipe_specs(sample):
    t = build_transforms([{"name": "resize_pad", "size": 64}, {"name": "clahe", "histeq": "True_1_4"},
                          "rand_hflip", "to_tensor"], seed=0)
    out = t(sample)
    assert out["image"].shape == (1, 64, 64)
    assert {"resize_pad", "clahe", "crop_to_mask", "hflip", "rand_affine", "unsharp"} <= set(TRANSFORMS.list())
    with pytest.raises(ConfigError, match="unknown transform"):
        build_transforms(["nope"])
    with pytest.raises(ConfigError, match="resize_pad"):
        build_transforms([{"name": "resize_pad", "sise": 3}])


def test_two_channel_image_moves_together(sample):
    two = {**sample, "image": np.stack([sample["image"], sample[schema.KEY_LUNG_MASK].astype(np.float32)])}
    out = RandAffined(rotate=20, p=1.0)(two, np.random.default_rng(0))
    assert out["image"].shape == (2, 96, 96)
    assert ((out["image"][1] > 0.5) == out[schema.KEY_LUNG_MASK].astype(bool)).mean() > 0.97
    flipped = HFlipd()(two)
    assert np.array_equal(flipped["image"][1], two["image"][1][:, ::-1])
