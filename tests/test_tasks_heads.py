"""Tasks: targets from manifest columns, heads, losses, decoding and metrics, one table of cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cxrlab.errors import ConfigError, InputError
from cxrlab.tasks import TaskSet, create_task, list_tasks, macro_mae

pytestmark = pytest.mark.usefixtures("one_torch_thread")


DF = pd.DataFrame({
    "finding": ["normal", "covid19", "viral_other", "bacterial", "fungal", None],
    "went_icu": [0, 1, 1, 0, None, 1],
    "opacity_right": [0, 3, 2, 1, 0, None],
    "opacity_left": [0, 2, 2, 1, None, 1],
    "geographic_extent": [0.0, 8.0, 4.0, 2.0, None, 1.0],
    "opacity_score": [0.0, 6.0, 3.0, 1.5, 2.0, None],
    **{f"brixia_{z}": [0, 3, 2, 1, 1, 0] for z in "ABCDEF"},
})

CASES = [  # spec, expected targets of the first 4 rows, expected decoded columns
    ({"kind": "diagnosis", "classes": ["normal", "viral", "covid19"], "class_map": {"viral_other": "viral"}},
     [[0], [2], [1], [np.nan]], ["prob_normal", "prob_viral", "prob_covid19", "pred_diagnosis"]),
    ({"kind": "binary", "column": "went_icu"}, [[0], [1], [1], [0]], ["prob_went_icu", "pred_went_icu"]),
    ({"kind": "opacity", "loss": "ce"}, [[0, 0], [3, 2], [2, 2], [1, 1]],
     ["prob_opacity_right_3", "pred_opacity_left", "score_opacity_right"]),
    ({"kind": "opacity", "loss": "corn"}, [[0, 0], [3, 2], [2, 2], [1, 1]], ["prob_opacity_left_0", "pred_opacity_right"]),
    ({"kind": "opacity", "loss": "coral"}, [[0, 0], [3, 2], [2, 2], [1, 1]], ["prob_opacity_left_2"]),
    ({"kind": "severity"}, [[0, 0], [1, 1], [0.5, 0.5], [0.25, 0.25]], ["pred_geographic_extent", "pred_opacity_score"]),
    ({"kind": "zones", "loss": "corn"}, [[0] * 6, [3] * 6, [2] * 6, [1] * 6], ["pred_brixia_A", "pred_brixia_global"]),
]


@pytest.mark.parametrize("spec,targets,columns", CASES, ids=[f"{c[0]['kind']}-{c[0].get('loss', '')}" for c in CASES])
def test_task_targets_loss_decode_metrics(spec, targets, columns):
    tasks = TaskSet.from_config([spec])
    y = tasks.targets(DF)
    np.testing.assert_allclose(y[:4], np.array(targets, dtype=float), equal_nan=True)
    torch.manual_seed(0)
    heads = tasks.heads(8)
    feats = torch.randn(len(DF), 8)
    outputs = {k: h(feats) for k, h in heads.items()}
    loss = tasks.loss(outputs, torch.as_tensor(y))
    assert torch.isfinite(loss) and loss > 0
    loss.backward()  # missing targets are masked, not NaN
    assert all(torch.isfinite(p.grad).all() for h in heads.values() for p in h.parameters())
    decoded = tasks.decode({k: v.detach().numpy() for k, v in outputs.items()})
    assert set(columns) <= set(decoded)
    assert all(len(v) == len(DF) for v in decoded.values())
    metrics = tasks.metrics(y, decoded)
    assert metrics and all(isinstance(v, (int, float)) for v in metrics.values())


@pytest.mark.parametrize("loss", ["ce", "corn", "coral"])
def test_ordinal_grade_probabilities_are_distributions(loss):
    task = create_task("opacity", loss=loss)
    logits = np.random.default_rng(0).normal(size=(50, 4 if loss == "ce" else 3)) * 3
    probs = task.grade_probs(logits)
    assert probs.shape == (50, 4) and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)


def test_training_a_head_reduces_each_loss():
    y = TaskSet.from_config([{"kind": "opacity", "loss": "corn"}]).targets(DF)
    tasks = TaskSet.from_config([{"kind": "opacity", "loss": "corn"}])
    torch.manual_seed(0)
    heads = torch.nn.ModuleDict(tasks.heads(6))
    feats = torch.eye(6)
    opt = torch.optim.Adam(heads.parameters(), 0.1)
    first = None
    for _ in range(60):
        loss = tasks.loss({k: h(feats) for k, h in heads.items()}, torch.as_tensor(y))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    decoded = tasks.decode({k: h(feats).detach().numpy() for k, h in heads.items()})
    assert loss.item() < first / 4
    np.testing.assert_array_equal(decoded["pred_opacity_right"][:4], [0, 3, 2, 1])


def test_vectorised_corn_matches_coral_pytorch():
    from coral_pytorch.losses import corn_loss

    from cxrlab.tasks.ordinal import corn_per_sample

    torch.manual_seed(0)
    logits, y = torch.randn(20, 3), torch.randint(0, 4, (20,))
    assert corn_per_sample(logits, y, 4).mean() == pytest.approx(float(corn_loss(logits, y, 4)), rel=1e-5)


def test_median_decision_minimises_absolute_error_where_the_mode_does_not():
    # grade probabilities 0.4 / 0 / 0 / 0.6 with bimodal mass and 0.3 / 0.3 / 0.4 / 0
    probs = np.array([[0.4, 0.0, 0.0, 0.6], [0.35, 0.05, 0.2, 0.4], [0.3, 0.3, 0.4, 0.0]])
    logits = np.log(np.clip(probs, 1e-9, None))
    mode = create_task("opacity", sides=["right"]).decode({"opacity:opacity_right": logits})["pred_opacity_right"]
    median = create_task("opacity", sides=["right"], decision="median").decode(
        {"opacity:opacity_right": logits})["pred_opacity_right"]
    np.testing.assert_array_equal(mode, [3, 3, 2])
    np.testing.assert_array_equal(median, [3, 2, 1])
    # the median's expected absolute error is never above the mode's, and lower on the last two rows
    grades = np.arange(4)
    cost = lambda pred: (probs * np.abs(grades[None, :] - pred[:, None])).sum(1)
    assert (cost(median) <= cost(mode) + 1e-12).all() and (cost(median)[1:] < cost(mode)[1:]).all()


def test_decision_defaults_follow_the_loss_and_travel_with_the_task_config():
    assert create_task("opacity").decision == "mode"
    assert create_task("opacity", loss="corn").decision == "median"
    task = TaskSet.from_config([{"kind": "zones", "decision": "median"}]).primary
    assert task.decision == "median" and task.config()["decision"] == "median"  # recorded in model.json
    with pytest.raises(ConfigError, match="decision must be one of"):
        create_task("opacity", decision="mean")


def test_macro_mae_weights_each_grade_equally():
    y = np.array([0, 0, 0, 0, 3])
    pred = np.array([0, 0, 0, 0, 0])
    assert macro_mae(y, pred) == pytest.approx(1.5)  # plain MAE would be 0.6


def test_per_side_items_decode_back_to_each_lung():
    tasks = TaskSet.from_config([{"kind": "opacity"}], per_side=True)
    rows = tasks.targets(DF)
    item_row, item_side = np.repeat(np.arange(len(DF)), 2), np.tile([0, 1], len(DF))
    items = tasks.item_targets(rows, item_row, item_side)
    assert items.shape == (2 * len(DF), 1)
    np.testing.assert_array_equal(items[:4, 0], [0, 0, 3, 2])
    logits = np.full((len(item_row), 4), -5.0)
    logits[np.arange(len(item_row)), np.nan_to_num(items[:, 0]).astype(int)] = 5.0
    decoded = tasks.decode({"opacity": logits}, item_row, item_side, len(DF))
    np.testing.assert_array_equal(decoded["pred_opacity_right"][:4], [0, 3, 2, 1])
    np.testing.assert_array_equal(decoded["pred_opacity_left"][:4], [0, 2, 2, 1])
    assert tasks.metrics(rows, decoded)["macro_mae"] == 0


def test_bad_targets_and_options_are_named():
    with pytest.raises(InputError, match="opacity_right"):
        TaskSet.from_config([{"kind": "opacity"}]).targets(DF.assign(opacity_right=[0, 7, 1, 1, 1, 1]))
    with pytest.raises(InputError, match="went_icu"):
        TaskSet.from_config([{"kind": "binary"}]).targets(DF.assign(went_icu=["Y", 1, 0, 0, 0, 0]))
    with pytest.raises(ConfigError, match="unknown option.*clases"):
        create_task("diagnosis", clases=["a", "b"])
    with pytest.raises(ConfigError, match="unknown task"):
        create_task("segmentation")
    assert set(list_tasks()) == {"diagnosis", "binary", "opacity", "severity", "zones"}


def test_multitask_heads_and_prefixed_metrics():
    tasks = TaskSet.from_config([{"kind": "diagnosis", "classes": ["normal", "covid19"]},
                                 {"kind": "severity", "weight": 0.5}])
    y = tasks.targets(DF)
    assert y.shape == (len(DF), 3)
    heads = tasks.heads(4)
    assert set(heads) == {"diagnosis", "severity"}
    outs = {k: h(torch.randn(len(DF), 4)).detach().numpy() for k, h in heads.items()}
    metrics = tasks.metrics(y, tasks.decode(outs))
    assert "diagnosis.macro_f1" in metrics and "severity.geographic_extent.mae" in metrics
