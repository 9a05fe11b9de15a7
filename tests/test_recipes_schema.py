"""Recipes: shipped YAML files validate; overrides apply; bad keys and values fail naming the key and reason."""

from __future__ import annotations

import pytest

from cxrlab.errors import ConfigError, InputError
from cxrlab.recipes import list_recipes, load_recipe, recipe_yaml

SHIPPED = ["aloe-opacity", "covid-icu", "cs230-diagnosis", "phantom-diagnosis"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipes_validate_and_round_trip(name, tmp_path):
    recipe = load_recipe(name)
    assert recipe.name == name and recipe.tasks
    path = tmp_path / "r.yaml"
    path.write_text(recipe_yaml(recipe))
    assert load_recipe(path) == recipe  # the resolved recipe saved in a run reproduces it


def test_list_has_the_published_pipelines():
    assert set(SHIPPED) <= set(list_recipes())


def test_issue_axes_are_recipe_keys():
    r = load_recipe("aloe-opacity", ["model.backbone=resnet18", "input.roi=midline", "train.balancing=double"])
    assert (r.model.backbone, r.input.roi, r.train.balancing) == ("resnet18", "midline", "double")
    assert [s.train_blocks for s in r.train.stages] == [0, 2]  # two-stage fine-tuning
    icu = load_recipe("covid-icu", ["input.clahe=false", "input.sharpen=false", "train.optimizer=sgd",
                                    "model.weights=xrv:densenet121-res224-all"])
    assert icu.input.roi == "image+mask" and icu.train.optimizer == "sgd" and icu.data.extra == "train_only"


def test_overrides_reach_lists_and_parse_yaml_values():
    r = load_recipe("aloe-opacity", ["train.stages.1.lr=1e-5", "split.ratios=[0.8, 0.1, 0.1]", "seed=7"])
    assert r.train.stages[1].lr == 1e-5 and r.split.ratios == [0.8, 0.1, 0.1] and r.seed == 7


@pytest.mark.parametrize("override,message", [
    ("train.lrr=0.1", r"key 'train\.lrr': unknown key"),
    ("modle.backbone=resnet18", r"key 'modle': unknown key"),
    ("train.optimizer=rmsprop", r"key 'train\.optimizer': Input should be 'adam', 'adamw' or 'sgd'"),
    ("train.batch_size=0", r"key 'train\.batch_size'.*greater than or equal to 1"),
    ("tasks.0.clases=[a, b]", r"key 'tasks'.*unknown option\(s\) clases"),
    ("input.roi=spine", r"key 'input'.*unknown ROI scheme 'spine'"),
    ("train.balancing=smote", r"key 'train'.*unknown balancing strategy 'smote'"),
    ("split.folds=5", None),
    ("train.stages.5.lr=1", r"train\.stages has 1 item\(s\), no index 5"),
    ("nonsense", r"expected key=value"),
])
def test_bad_recipes_fail_with_key_and_reason(override, message):
    if message is None:
        assert load_recipe("phantom-diagnosis", [override]).split.folds == 5
        return
    with pytest.raises(ConfigError, match=message):
        load_recipe("phantom-diagnosis", [override])


def test_unknown_recipe_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown recipe 'nope'.*phantom-diagnosis"):
        load_recipe("nope")
    with pytest.raises(InputError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntasks: [{kind: diagnosis}]\ntrain: {epochs: 3}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: key 'train\.epochs': unknown key"):
        load_recipe(bad)
