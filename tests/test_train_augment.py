"""Training-time augmentation moves the targets with the image: a horizontal flip puts the patient's right lung
where the left one was, so per-lung grades and Brixia zones swap sides; single-valued targets stay."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cxrlab.tasks import TaskSet
from cxrlab.train.inputs import AugmentedItems
from cxrlab.transforms import build_transforms

TASKS = [{"kind": "opacity", "sides": ["right", "left"]}, {"kind": "zones"},
         {"kind": "diagnosis", "classes": ["normal", "bacterial", "viral", "covid19"]}]
# opacity right, left | Brixia A B C D E F | diagnosis
ROW = [2.0, 0.0, 3.0, 2.0, 1.0, 0.0, 1.0, 2.0, 3.0]
FLIPPED = [0.0, 2.0, 0.0, 1.0, 2.0, 3.0, 2.0, 1.0, 3.0]


def _items(tasks: TaskSet, rows: list[list[float]], flip_p: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    inputs = torch.arange(len(rows) * 8 * 8, dtype=torch.float32).reshape(len(rows), 1, 8, 8)
    augment = build_transforms([{"name": "rand_hflip", "p": flip_p}])
    data = AugmentedItems(inputs, np.arange(len(rows)), augment, seed=0,
                          targets=np.array(rows, dtype=np.float32), target_names=tasks.item_columns)
    return [data[i] for i in range(len(rows))]


def test_item_columns_name_each_target():
    assert TaskSet.from_config(TASKS).item_columns == ["opacity_right", "opacity_left", "brixia_A", "brixia_B",
                                                       "brixia_C", "brixia_D", "brixia_E", "brixia_F", "finding"]
    per_lung = TaskSet.from_config([{"kind": "opacity"}], per_side=True)
    assert per_lung.item_columns == ["opacity"]  # "this lung": no side to swap


@pytest.mark.parametrize("flip_p, expected", [(1.0, FLIPPED), (0.0, ROW)])
def test_flip_swaps_side_targets_and_keeps_the_rest(flip_p, expected):
    tasks = TaskSet.from_config(TASKS)
    (image, targets), = _items(tasks, [ROW], flip_p)
    assert targets.tolist() == expected
    original = torch.arange(64, dtype=torch.float32).reshape(1, 8, 8)
    assert torch.equal(image, original.flip(-1) if flip_p else original)


def test_random_flip_swaps_exactly_the_flipped_items():
    tasks = TaskSet.from_config(TASKS[:1])
    rows = [[float(i % 4), 3.0 - i % 4] for i in range(40)]
    out = _items(tasks, rows, 0.5)
    flipped = [not torch.equal(x[0, :, 0], torch.arange(64.0).reshape(8, 8)[:, 0] + 64 * i)
               for i, (x, _) in enumerate(out)]
    assert 5 < sum(flipped) < 35
    for row, was_flipped, (_, y) in zip(rows, flipped, out):
        assert y.tolist() == (row[::-1] if was_flipped else row)


def test_one_sided_target_is_unknown_after_a_flip():
    """A right-lung-only model: the flipped image's patient-right lung is the original left one, whose grade the
    run does not hold, so the target becomes NaN (no loss) instead of the wrong lung's grade."""
    tasks = TaskSet.from_config([{"kind": "opacity", "sides": ["right"]}])
    (_, flipped), = _items(tasks, [[2.0]], 1.0)
    assert math.isnan(flipped.item())
    (_, kept), = _items(tasks, [[2.0]], 0.0)
    assert kept.item() == 2.0


def test_per_side_items_keep_their_grade():
    tasks = TaskSet.from_config([{"kind": "opacity"}], per_side=True)
    (_, y), = _items(tasks, [[3.0]], 1.0)
    assert y.tolist() == [3.0]


def test_trainer_trains_flipped_images_on_swapped_lung_grades(phantom_root, cxrlab_home, tmp_path, monkeypatch,
                                                              one_torch_thread):
    """Through the trainer: with every image flipped, each batch's loss sees (left, right) grades."""
    from cxrlab.tasks.multi import TaskSet as TS
    from cxrlab.train import train
    from cxrlab.train.trainer import Trainer

    expected: list[np.ndarray] = []
    seen: list[np.ndarray] = []
    batches, loss = Trainer._batches_for_epoch, TS.loss

    def spy_batches(self, plan, items, seed):
        bs = self.recipe.train.batch_size
        for start, x, y in batches(self, plan, items, seed):
            expected.append(self.table.item_targets[items[start:start + bs]])
            yield start, x, y

    def spy_loss(self, outputs, targets, sample_weight=None, focal_gamma=0.0):
        if torch.is_grad_enabled():  # training batches only (validation runs without gradients)
            seen.append(targets.numpy().copy())
        return loss(self, outputs, targets, sample_weight, focal_gamma)

    monkeypatch.setattr(Trainer, "_batches_for_epoch", spy_batches)
    monkeypatch.setattr(TS, "loss", spy_loss)
    train("aloe-opacity", [phantom_root / "manifest.csv"], tmp_path / "flip", show_progress=False,
          overrides=["train.num_workers=0", "input.roi=none", "input.size=32", "model.backbone=pasa_cnn",
                     "model.weights=none", "train.balancing=none", "input.augment=[{name: rand_hflip, p: 1.0}]",
                     "train.stages=[{epochs: 1, train_blocks: all, lr: 0.001}]"])
    assert seen and len(seen) <= len(expected)
    assert any((e[:, 0] != e[:, 1]).any() for e in expected)  # some lungs differ: a swap is visible
    for got, original in zip(seen, expected):
        np.testing.assert_array_equal(got, original[:, ::-1])  # columns: opacity_right, opacity_left
