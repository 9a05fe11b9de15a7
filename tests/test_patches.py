"""Patch-by-patch building blocks: lung-centred sampling, extraction, aggregation, probabilistic patch CAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cxrlab.errors import ConfigError, InputError
from cxrlab.patches import (PatchSampler, aggregate_patches, clamp_windows, extract_patches, extract_patches_batch,
                            majority_vote, masked_canvas, mean_probability, patch_maps_to_canvas,
                            probabilistic_patch_cam, sample_lung_centres, vote_counts)


def _random_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """One of several mask families, including the hard ones: 1-px lines, lone edge/corner pixels, diagonal
    blobs (where independent row/column draws would fall outside), sparse speckle, border-touching slabs."""
    m = np.zeros((h, w), np.uint8)
    kind = rng.integers(7)
    if kind == 0:                                    # two ellipses, like lungs
        yy, xx = np.mgrid[:h, :w]
        for cx in (w * 0.3, w * 0.7):
            ry, rx = rng.uniform(0.1, 0.4) * h, rng.uniform(0.05, 0.2) * w
            m |= (((yy - h / 2) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
    elif kind == 1:                                  # a 1-px line, horizontal or vertical, anywhere
        if rng.random() < 0.5:
            m[rng.integers(h), rng.integers(0, w // 2):] = 1
        else:
            m[rng.integers(0, h // 2):, rng.integers(w)] = 1
    elif kind == 2:                                  # a lone pixel on an edge or in a corner
        m[rng.choice([0, h - 1, rng.integers(h)]), rng.choice([0, w - 1])] = 1
    elif kind == 3:                                  # diagonal blobs: top-left and bottom-right only
        a = int(rng.integers(1, max(2, h // 4)))
        m[:a, :a] = 1
        m[h - a:, w - a:] = 1
    elif kind == 4:                                  # sparse speckle
        m = (rng.random((h, w)) < rng.uniform(0.001, 0.05)).astype(np.uint8)
    elif kind == 5:                                  # a slab touching the bottom/right border
        m[rng.integers(h):, rng.integers(w):] = 1
    else:                                            # a 1-px diagonal
        n = min(h, w)
        i = np.arange(rng.integers(1, n + 1))
        m[i, i if rng.random() < 0.5 else w - 1 - i] = 1
    if not m.any():
        m[rng.integers(h), rng.integers(w)] = 1
    return m


def test_centres_always_inside_the_lung_mask_and_windows_inside_the_image():
    rng = np.random.default_rng(1234)
    for trial in range(400):
        h, w = int(rng.integers(8, 96)), int(rng.integers(8, 96))
        mask = _random_mask(rng, h, w)
        p = int(rng.integers(1, min(h, w) + 1))
        centres = sample_lung_centres(mask, k=int(rng.integers(1, 60)), rng=rng)
        assert mask[centres[:, 0], centres[:, 1]].all(), f"trial {trial}: a centre outside the mask"
        corners = clamp_windows(centres, p, mask.shape)
        assert (corners >= 0).all() and (corners[:, 0] + p <= h).all() and (corners[:, 1] + p <= w).all()
        # the window still holds its centre, however far it was shifted
        assert ((corners <= centres) & (centres < corners + p)).all()


def test_centres_are_one_pixel_not_independent_row_and_column():
    # only the top-left and bottom-right corners are lung: independent draws would hit the other corners half the time
    mask = np.zeros((50, 50), np.uint8)
    mask[0, 0] = mask[49, 49] = 1
    centres = sample_lung_centres(mask, 1000, np.random.default_rng(0))
    seen = {tuple(c) for c in centres.tolist()}
    assert seen == {(0, 0), (49, 49)}  # both lung pixels are drawn, nothing else


def test_sampling_errors_are_clear():
    with pytest.raises(InputError, match="empty"):
        sample_lung_centres(np.zeros((8, 8)), 3, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="does not fit"):
        clamp_windows(np.zeros((1, 2), int), 9, (8, 8))


def test_extract_patches_match_plain_slicing_numpy_and_torch():
    rng = np.random.default_rng(0)
    canvas = rng.random((2, 40, 30)).astype(np.float32)
    corners = np.array([[0, 0], [10, 5], [30, 20], [3, 17]])
    expected = np.stack([canvas[:, r:r + 10, c:c + 10] for r, c in corners])
    np.testing.assert_array_equal(extract_patches(canvas, corners, 10), expected)
    np.testing.assert_array_equal(extract_patches(canvas[0], corners, 10), expected[:, 0])
    batched = extract_patches_batch(torch.from_numpy(np.stack([canvas, canvas[::-1].copy()])),
                                    torch.from_numpy(np.stack([corners, corners[::-1].copy()])), 10)
    assert batched.shape == (2, 4, 2, 10, 10)
    np.testing.assert_array_equal(batched[0].numpy(), expected)
    np.testing.assert_array_equal(batched[1, 0].numpy(), canvas[::-1][:, 3:13, 17:27])


def test_masked_canvas_and_sampler():
    image = np.linspace(1, 2, 64 * 48, dtype=np.float32).reshape(64, 48)
    mask = np.zeros((64, 48), np.uint8)
    mask[10:50, 5:20] = 1
    canvas, cmask = masked_canvas(image, mask, size=128)
    assert canvas.shape == (1, 128, 128) and cmask.shape == (128, 128)
    assert set(np.unique(cmask)) == {0, 1}
    assert (canvas[0][cmask == 0] == 0).all() and (canvas[0][cmask == 1] > 0).all()
    patches = PatchSampler(canvas_size=128, patch_size=32, count=7)(image, mask, np.random.default_rng(0))
    assert patches.images.shape == (7, 1, 32, 32) and patches.canvas_shape == (128, 128)
    assert cmask[patches.centres[:, 0], patches.centres[:, 1]].all()
    np.testing.assert_array_equal(patches.images, extract_patches(canvas, patches.corners, 32))
    assert PatchSampler().canvas_size == 1024 and PatchSampler().patch_size == 224 and PatchSampler().count == 100
    with pytest.raises(InputError, match="does not match"):
        masked_canvas(image, mask[:10], size=128)
    with pytest.raises(ConfigError):
        PatchSampler(canvas_size=64, patch_size=128)


# hand-made patch probabilities: (K, C) -> expected vote shares, vote label, mean label
AGGREGATION_CASES = [
    # clear majority: 3 of 5 patches say class 1
    ([[.1, .8, .1], [.2, .7, .1], [.1, .6, .3], [.9, .05, .05], [.2, .2, .6]], [.2, .6, .2], 1, 1),
    # votes tie 2-2 between classes 0 and 2: class 2 has the higher mean probability (0.39 vs 0.37)
    ([[.6, .1, .3], [.55, .15, .3], [.1, .0, .9], [.2, .05, .75]], [.5, 0, .5], 2, 2),
    # votes tie and the means tie: the lowest class index wins
    ([[.6, .4], [.4, .6]], [.5, .5], 0, 0),
    # a patch whose own top probabilities tie votes for the lowest index
    ([[.5, .5, 0], [.5, .5, 0], [0, .4, .6]], [2 / 3, 0, 1 / 3], 0, 1),
    # vote and mean disagree: many lukewarm votes for 0, one confident patch for 1
    ([[.51, .49], [.51, .49], [.51, .49], [0, 1.0], [0, 1.0]], [.6, .4], 0, 1),
]


@pytest.mark.parametrize("probs, shares, vote_label, mean_label", AGGREGATION_CASES)
def test_majority_vote_and_mean_on_hand_made_patch_probabilities(probs, shares, vote_label, mean_label):
    p = np.array(probs)
    vote = majority_vote(p)
    np.testing.assert_allclose(vote.probs, shares)
    assert vote.label == vote_label
    mean = mean_probability(p)
    np.testing.assert_allclose(mean.probs, p.mean(axis=0))
    assert mean.label == mean_label
    assert aggregate_patches(torch.tensor(probs), "vote").label == vote_label  # torch in, same answer


def test_aggregation_is_batched():
    batch = np.stack([np.array(AGGREGATION_CASES[0][0]), np.array(AGGREGATION_CASES[0][0])[:, ::-1]])
    out = aggregate_patches(batch, "vote")
    assert out.probs.shape == (2, 3) and out.label.tolist() == [1, 1]
    assert vote_counts(batch).tolist() == [[1, 3, 1], [1, 3, 1]]
    np.testing.assert_allclose(out.probs.sum(axis=1), 1)
    with pytest.raises(ConfigError, match="unknown patch aggregation"):
        aggregate_patches(batch, "median")


def test_patch_maps_to_canvas_is_count_normalised_and_weighted():
    maps = np.stack([np.full((4, 4), 1.0), np.full((4, 4), 3.0)])
    corners = np.array([[0, 0], [2, 2]])
    heat = patch_maps_to_canvas(maps, corners, (8, 8))
    assert heat[0, 0] == 1 and heat[5, 5] == 3 and heat[2, 2] == 2 and heat[7, 7] == 0 and heat[0, 7] == 0
    weighted = patch_maps_to_canvas(maps, corners, (8, 8), weights=np.array([0.5, 0.0]))
    assert weighted[0, 0] == 0.5 and weighted[3, 3] == 0.25 and weighted[5, 5] == 0


def test_probabilistic_patch_cam_runs_on_a_small_model():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    patches = PatchSampler(canvas_size=64, patch_size=16, count=12)(
        np.random.default_rng(0).random((64, 64)).astype(np.float32), np.pad(np.ones((40, 40)), 12),
        np.random.default_rng(1))
    heat, probs = probabilistic_patch_cam(model, torch.from_numpy(patches.images), patches.corners,
                                          patches.canvas_shape, target_class=1, target_layers=[conv])
    assert heat.shape == (64, 64) and probs.shape == (12, 3)
    assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    covered = patch_maps_to_canvas(np.ones((12, 16, 16)), patches.corners, (64, 64)) > 0
    assert (heat[~covered] == 0).all()


def test_phantom_patches_are_centred_on_its_lungs(phantom_manifest):
    from cxrlab.data import schema
    from cxrlab.data.dataset import load_sample

    sampler = PatchSampler(canvas_size=256, patch_size=48, count=50)
    rng = np.random.default_rng(0)
    for _, row in phantom_manifest.df.head(12).iterrows():
        sample = load_sample(row, mask_columns=[schema.MASK_LUNGS], label_columns=[])
        patches = sampler(sample[schema.KEY_IMAGE], sample[schema.KEY_LUNG_MASK], rng, source=row[schema.IMAGE])
        _, canvas_mask = masked_canvas(sample[schema.KEY_IMAGE], sample[schema.KEY_LUNG_MASK], 256)
        assert canvas_mask[patches.centres[:, 0], patches.centres[:, 1]].all()
        assert patches.images.shape == (50, 1, 48, 48)
        # every window lies on the canvas and holds its centre
        r, c = (patches.centres - patches.corners).T
        assert (patches.corners >= 0).all() and (patches.corners + 48 <= 256).all()
        assert ((r >= 0) & (r < 48) & (c >= 0) & (c < 48)).all()
