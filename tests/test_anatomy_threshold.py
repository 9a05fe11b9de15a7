"""The fitted mask threshold: per-cut Dice, the group-macro score, the choice rule, the threshold.json file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrlab.anatomy.metrics import dice
from cxrlab.anatomy.threshold import (
    CANDIDATES, choose_threshold, dice_at_thresholds, run_threshold, threshold_scores, write_run_threshold)
from cxrlab.errors import InputError


def test_dice_at_every_cut_equals_dice_of_the_cut_mask():
    rng = np.random.default_rng(0)
    prob = rng.random((40, 50)).astype(np.float32)
    truth = rng.random((40, 50)) > 0.6
    region = np.zeros((40, 50), bool)
    region[5:35, 5:45] = True
    got = dice_at_thresholds(prob, truth, CANDIDATES, region=region)
    want = [dice((prob >= t) & region, truth) for t in CANDIDATES]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_clear_film_scores_one_only_when_no_pixel_passes_the_cut():
    prob = np.zeros((20, 20), np.float32)
    prob[3, 3] = 0.42  # one faint false pixel
    got = dice_at_thresholds(prob, np.zeros((20, 20), bool), (0.4, 0.45))
    np.testing.assert_array_equal(got, [0.0, 1.0])
    outside = np.zeros((20, 20), bool)  # ...and a pixel outside the lungs does not count
    np.testing.assert_array_equal(dice_at_thresholds(prob, outside, (0.4,), region=outside), [1.0])


def test_score_is_the_mean_over_groups_not_over_images():
    # 3 disease films prefer the low cut, 1 clear film the high one: per group each counts once
    d = np.array([[0.9, 0.5], [0.9, 0.5], [0.9, 0.5], [0.0, 1.0]])
    scores = threshold_scores(d, ["disease", "disease", "disease", "clear"])
    np.testing.assert_allclose(scores, [0.45, 0.75])
    with pytest.raises(InputError, match="Dice values for 3 images"):
        threshold_scores(d, ["a", "b", "c"])


def test_choice_moves_only_for_a_real_gain_and_ties_stay_near_the_recipe_cut():
    cands = (0.3, 0.4, 0.5, 0.6)
    moved = choose_threshold(np.array([0.70, 0.80, 0.75, 0.60]), 0.5, cands, min_gain=0.01)
    assert moved["threshold"] == 0.4 and moved["score"] == pytest.approx(0.80)
    assert moved["score_at_recipe_threshold"] == pytest.approx(0.75)
    kept = choose_threshold(np.array([0.70, 0.755, 0.75, 0.60]), 0.5, cands, min_gain=0.01)
    assert kept["threshold"] == 0.5 and kept["score"] == pytest.approx(0.75)
    tie = choose_threshold(np.array([0.80, 0.70, 0.70, 0.80]), 0.5, cands, min_gain=0.0)
    assert tie["threshold"] == 0.6  # equal best scores: the one nearer the recipe's cut


def test_threshold_file_round_trip_and_bad_values(tmp_path):
    assert run_threshold(tmp_path) is None  # no file: the recipe's cut applies
    path = write_run_threshold(tmp_path, 0.35, {"fitted_on": {"split": "val"}})
    assert run_threshold(tmp_path) == 0.35
    assert json.loads(path.read_text())["fitted_on"] == {"split": "val"}
    for bad in ('{"threshold": 1.5}', '{"threshold": "low"}', '{"threshold": true}', "[0.3]"):
        path.write_text(bad)
        with pytest.raises(InputError, match="strictly between 0 and 1") as err:
            run_threshold(tmp_path)
        assert "threshold.json" in str(err.value)
    path.write_text("{not json")
    with pytest.raises(InputError, match="unreadable fitted threshold"):
        run_threshold(tmp_path)
    with pytest.raises(InputError, match="strictly between"):
        write_run_threshold(tmp_path, 1.0, {})
