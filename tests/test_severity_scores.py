"""Score functions on hand-built masks: each case's expected value is worked out from the definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrlab.errors import InputError
from cxrlab.severity import scores as S

H, W = 60, 80


def two_lungs() -> tuple[np.ndarray, np.ndarray]:
    """Patient's right lung on the IMAGE LEFT (cols 10-29), patient's left lung on the image right (cols 50-69)."""
    right = np.zeros((H, W), np.uint8)
    left = np.zeros((H, W), np.uint8)
    right[0:60, 10:30] = 1
    left[0:60, 50:70] = 1
    return right, left


def thirds(right: np.ndarray, left: np.ndarray) -> dict[str, np.ndarray]:
    """Zones A-C / D-F as the upper, middle and lower 20 rows of each lung (hand-built, equal height)."""
    zones = {}
    for lung, letters in ((right, "ABC"), (left, "DEF")):
        for k, z in enumerate(letters):
            band = np.zeros_like(lung)
            band[20 * k:20 * (k + 1)] = 1
            zones[z] = band & lung
    return zones


GRADE_CASES = [  # fraction, involvement grade 0-3, Cohen extent grade 0-4
    (0.0, 0, 0),
    (0.004, 0, 0),   # rounds to 0 %
    (0.01, 1, 1),
    (0.25, 1, 1),
    (0.26, 1, 2),
    (0.33, 1, 2),
    (0.34, 2, 2),
    (0.50, 2, 2),
    (0.51, 2, 3),
    (0.66, 2, 3),
    (0.67, 3, 3),
    (0.75, 3, 3),
    (0.76, 3, 4),
    (1.0, 3, 4),
]


@pytest.mark.parametrize("fraction,grade,extent", GRADE_CASES)
def test_grades_follow_published_bands(fraction, grade, extent):
    assert S.involvement_grade(fraction) == grade
    assert S.extent_grade(fraction) == extent


def test_grades_keep_nan():
    assert np.isnan(S.involvement_grade(np.nan)) and np.isnan(S.extent_grade(np.nan))
    np.testing.assert_array_equal(S.involvement_grade(np.array([0.0, 0.5, 0.9])), [0, 2, 3])


def test_no_disease_scores_zero():
    right, left = two_lungs()
    rec = S.score_masks(np.zeros((H, W), np.uint8), right, left, thirds(right, left))
    for key in ("involvement_right", "involvement_left", "geographic_extent", "opacity_score", "zone_count",
                "brixia_global"):
        assert rec[key] == 0, key


def test_per_lung_fraction_and_side():
    """Disease in the IMAGE-LEFT lung is the PATIENT's right lung: zones A-C, not D-F."""
    right, left = two_lungs()
    disease = np.zeros((H, W), np.uint8)
    disease[0:30, 10:30] = 1  # upper half of the patient's right lung
    rec = S.score_masks(disease, right, left, thirds(right, left), brixia_cutpoints=(0.0, 0.4, 0.9))
    assert rec["involvement_right"] == pytest.approx(0.5)
    assert rec["involvement_left"] == 0
    assert rec["involvement_lungs"] == pytest.approx(0.25)
    assert (rec["grade_right"], rec["grade_left"]) == (2, 0)
    assert (rec["extent_right"], rec["extent_left"], rec["geographic_extent"]) == (2, 0, 2)
    assert rec["opacity_score"] == 2
    # zone A fully involved, B half involved, C none; left zones none
    assert [rec[f"zone_involvement_{z}"] for z in "ABCDEF"] == pytest.approx([1, 0.5, 0, 0, 0, 0])
    assert rec["zone_count"] == 2
    assert [rec[f"brixia_{z}"] for z in "ABCDEF"] == [3, 2, 0, 0, 0, 0]
    assert rec["brixia_global"] == 5


def test_swapped_left_right_swaps_every_score():
    right, left = two_lungs()
    disease = np.zeros((H, W), np.uint8)
    disease[40:60, 50:70] = 1  # lower third of the patient's left lung
    rec = S.score_masks(disease, right, left, thirds(right, left))
    swapped = S.score_masks(disease, left, right, thirds(left, right))
    assert rec["involvement_left"] == pytest.approx(1 / 3) and rec["involvement_right"] == 0
    assert swapped["involvement_right"] == pytest.approx(1 / 3) and swapped["involvement_left"] == 0
    assert rec["brixia_F"] == 3 and rec["brixia_C"] == 0
    assert swapped["brixia_C"] == 3 and swapped["brixia_F"] == 0
    assert rec["brixia_global"] == swapped["brixia_global"]


def test_disease_outside_lungs_is_discarded():
    right, left = two_lungs()
    disease = np.zeros((H, W), np.uint8)
    disease[:, 30:50] = 1   # mediastinum only
    disease[:, 0:10] = 1    # outside the body side
    rec = S.score_masks(disease, right, left, thirds(right, left))
    assert rec["involvement_right"] == 0 and rec["involvement_left"] == 0 and rec["brixia_global"] == 0
    assert rec["disease_outside_lungs_px"] == H * 30


def test_one_lung_missing_gives_nan_for_that_lung_and_totals():
    right, left = two_lungs()
    left[:] = 0
    disease = np.zeros((H, W), np.uint8)
    disease[0:60, 10:20] = 1
    rec = S.score_masks(disease, right, left, thirds(right, left))
    assert rec["involvement_right"] == pytest.approx(0.5) and rec["grade_right"] == 2
    assert all(math.isnan(rec[k]) for k in ("involvement_left", "grade_left", "extent_left", "geographic_extent",
                                           "opacity_score", "zone_count", "brixia_global", "brixia_D",
                                           "involvement_lungs"))
    assert rec["brixia_A"] == 2  # right-lung zones are still scored


def test_size_mismatch_is_a_clear_error():
    right, left = two_lungs()
    with pytest.raises(InputError, match="disease_mask.*differs"):
        S.score_masks(np.zeros((H + 1, W), np.uint8), right, left, thirds(right, left))
    with pytest.raises(InputError, match="image size"):
        S.check_masks(np.zeros((H, W)), right, left, image_shape=(H, W + 4), source="x.png")


def test_empty_lung_mask_is_a_clear_error():
    empty = np.zeros((H, W), np.uint8)
    with pytest.raises(InputError, match="lung mask is empty"):
        S.lung_involvement(np.ones((H, W), np.uint8), empty, empty)


def test_zone_count_threshold():
    z = np.array([[0.0, 0.05, 0.2, 0.5, 0.9, 1.0], [0, 0, 0, 0, 0, 0.01]])
    np.testing.assert_array_equal(S.zone_count_score(z, 0.0), [5, 1])
    np.testing.assert_array_equal(S.zone_count_score(z, 0.1), [4, 0])


def test_fit_zone_threshold_recovers_separating_value():
    rng = np.random.default_rng(0)
    frac = rng.uniform(0, 1, size=(200, 6))
    affected = frac > 0.3
    t = S.fit_zone_threshold(frac, affected)
    assert 0.25 < t < 0.35
    assert np.array_equal(frac > t, affected)


def test_fit_brixia_cutpoints_recovers_generating_cutpoints():
    rng = np.random.default_rng(1)
    frac = rng.uniform(0, 1, size=(300, 6))
    true = (0.1, 0.45, 0.8)
    scores = S.brixia_zone_scores(frac, true)
    fitted = S.fit_brixia_cutpoints(frac, scores)
    assert np.allclose(fitted, true, atol=0.02)
    np.testing.assert_array_equal(S.brixia_zone_scores(frac, fitted), scores)


def test_fit_ignores_nan_and_rejects_nothing_to_fit():
    assert S.fit_threshold([0.1, np.nan, 0.9], [0, 1, 1]) == pytest.approx(0.5)
    with pytest.raises(InputError):
        S.fit_threshold([np.nan], [1])


def test_bad_cutpoints_rejected():
    with pytest.raises(InputError, match="ascending"):
        S.brixia_zone_scores(np.zeros(6), (0.5, 0.2, 0.9))
