"""``group_column``: the segmentation trainer's balanced draw over any manifest column, and severity's
disease/clear groups without relabelling ``source_dataset``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrlab.anatomy import load_config, train_segmentation
from cxrlab.anatomy import train as anatomy_train
from cxrlab.anatomy.data import Cached, assign_split, balanced_draw, group_column, load_table
from cxrlab.data import load_manifest, schema
from cxrlab.errors import ConfigError, InputError
from cxrlab.severity.config import load_severity_config
from cxrlab.severity.train import SAMPLING_GROUP, disease_config, training_table

torch.set_num_threads(1)


def hand_table() -> pd.DataFrame:
    """100 images: 70 from source A, 30 from B; sex M 80 / F 20, unevenly spread over the sources."""
    return pd.DataFrame({"image": [f"i{k}.png" for k in range(100)],
                         "source_dataset": ["A"] * 70 + ["B"] * 30,
                         "sex": ["M"] * 65 + ["F"] * 5 + ["M"] * 15 + ["F"] * 15})


# (column balanced on, expected shares of its values, the other column's share of its first value: a mix of
# each group's own composition, e.g. sex-balanced: P(A) = 0.5 * 5/20 + 0.5 * 65/80)
TEST_CASES = [
    ["sex", {"F": 0.5, "M": 0.5}, 0.5 * 5 / 20 + 0.5 * 65 / 80],
    ["source_dataset", {"A": 0.5, "B": 0.5}, 0.5 * 5 / 70 + 0.5 * 15 / 30],
]


@pytest.mark.parametrize("column,expected,other_share", TEST_CASES)
def test_draw_balances_any_column(column, expected, other_share):
    df = hand_table()
    groups = df[column].to_numpy(dtype=object)
    rng = np.random.default_rng(0)
    drawn = np.concatenate([balanced_draw(groups, 40, rng) for _ in range(50)])
    freq = pd.Series(groups[drawn]).value_counts(normalize=True).to_dict()
    assert freq == pytest.approx(expected, abs=1e-9)  # exactly equal shares in every draw
    # the other column is NOT balanced by it: the draw follows the chosen column only
    other = "source_dataset" if column == "sex" else "sex"
    first = sorted(set(df[other]))[0]
    assert np.mean(df[other].to_numpy()[drawn] == first) == pytest.approx(other_share, abs=0.03)
    # weights are patterns over the group values, as source_weights are over sources
    picks = balanced_draw(groups, 90, rng, {sorted(expected)[0]: 2.0, "*": 1.0})
    assert (groups[picks] == sorted(expected)[0]).sum() == 60


def test_default_groups_are_the_sources():
    cfg = load_config({})
    assert cfg.group_column is None and group_column(cfg) == schema.SOURCE_DATASET
    src = np.array(["A", "B", "A"], dtype=object)
    cache = Cached(np.zeros((3, 2, 2), np.uint8), None, np.zeros((3, 1, 2, 2), np.uint8), np.ones((3, 1), bool),
                   np.zeros((3, 2, 2), np.uint8), src)
    assert cache.groups is src  # default draw, val subset, selection: over sources, as before
    # the same rng draws the same positions whether the groups are given as sources or as an equal column
    a = balanced_draw(src, 6, np.random.default_rng(3))
    b = balanced_draw(np.array(["x", "y", "x"], dtype=object), 6, np.random.default_rng(3))
    assert a.tolist() == b.tolist()


def two_source_manifest(phantom_root: Path, tmp_path: Path) -> Path:
    df = load_manifest(phantom_root / "manifest.csv").df.copy()
    df[schema.SOURCE_DATASET] = np.where(np.arange(len(df)) % 3 == 0, "B", "A")
    df["scanner"] = np.where(df["sex"] == "F", "portable", "fixed")
    path = tmp_path / "manifest.csv"
    df.to_csv(path, index=False)
    return path


def tiny(manifest: Path, **changes) -> dict:
    cfg = {"manifests": [str(manifest)], "size": 64, "arch": "unet", "encoder": "efficientnet_lite0",
           "weights": "imagenet", "arch_kwargs": {"decoder_channels": [16, 8, 8, 8, 8]}, "epochs": 1,
           "batch_size": 8, "samples_per_epoch": 16, "val_max_images": 4, "threads": 1, "seed": 0,
           "targets": [schema.MASK_DISEASE], "evaluate_test": False}
    cfg.update(changes)
    return cfg


def test_trainer_draws_on_the_group_column(phantom_root: Path, tmp_path: Path, monkeypatch):
    manifest = two_source_manifest(phantom_root, tmp_path)
    seen: list[np.ndarray] = []
    real = anatomy_train.balanced_draw

    def spy(groups, n, rng, weights=None):
        seen.append(np.asarray(groups))
        return real(groups, n, rng, weights)

    monkeypatch.setattr(anatomy_train, "balanced_draw", spy)
    train_segmentation(tiny(manifest, group_column="scanner"), out=tmp_path / "scanner")
    assert set(seen[-1]) == {"portable", "fixed"}
    train_segmentation(tiny(manifest), out=tmp_path / "default")
    assert set(seen[-1]) == {"A", "B"}  # default: the sources
    # the split is stratified by the groups (by_source), patient-level either way
    cfg = load_config(tiny(manifest, group_column="scanner"))
    split = assign_split(load_table(cfg), cfg)
    for value in ("portable", "fixed"):
        parts = split.loc[split["scanner"] == value, "split"].value_counts()
        assert {"train", "val", "test"} <= set(parts.index)


def test_group_column_errors(phantom_root: Path, tmp_path: Path):
    manifest = two_source_manifest(phantom_root, tmp_path)
    with pytest.raises(ConfigError, match="group_column 'site' is not a column"):
        load_table(load_config(tiny(manifest, group_column="site")))
    df = pd.read_csv(manifest)
    df.loc[3, "scanner"] = None
    df.to_csv(manifest, index=False)
    with pytest.raises(InputError, match="1 row\\(s\\) have no scanner"):
        load_table(load_config(tiny(manifest, group_column="scanner")))


def test_severity_keeps_the_true_source(phantom_root: Path, tmp_path: Path):
    manifest = two_source_manifest(phantom_root, tmp_path)
    cfg = load_severity_config({"lung_run": "unused", "manifests": [str(manifest)], "out": str(tmp_path)})
    table = training_table(cfg, tmp_path, lambda *a: None)
    assert set(table[schema.SOURCE_DATASET]) == {"A", "B"}  # no longer relabelled
    # the groups are the ones the relabelling used to make: "<source>|disease" / "<source>|clear"
    expected = [f"{s}|{'disease' if d else 'clear'}" for s, d in zip(table[schema.SOURCE_DATASET],
                                                                       table["has_disease"])]
    assert table[SAMPLING_GROUP].tolist() == expected
    assert {"A|clear", "A|disease"} <= set(expected)
    seg = load_config(disease_config(cfg, manifest, tmp_path, len(table)))
    assert seg.group_column == SAMPLING_GROUP and seg.samples_per_epoch is not None
    natural = load_severity_config({**cfg.model_dump(), "sampling": "natural"})
    assert load_config(disease_config(natural, manifest, tmp_path, len(table))).group_column is None
    other = load_severity_config({**cfg.model_dump(), "group_column": "has_disease"})
    assert load_config(disease_config(other, manifest, tmp_path, len(table))).group_column == "has_disease"
    with pytest.raises(ConfigError, match="disease.group_column is set by the severity pipeline"):
        load_severity_config({**cfg.model_dump(), "disease": {"group_column": "sex"}})
