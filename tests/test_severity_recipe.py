"""The shipped ``covid-scoring`` recipe: a ``kind: severity`` recipe validated by the severity schema, listed
and shown with the learning recipes, and runnable by name with ``cxrlab severity train``."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from cxrlab.cli.main import app
from cxrlab.errors import ConfigError, InputError
from cxrlab.recipes import list_recipes, load_recipe, recipe_yaml
from cxrlab.severity.config import SeverityConfig, load_severity_config

runner = CliRunner()


def test_covid_scoring_recipe_loads_and_round_trips(tmp_path):
    cfg = load_severity_config("covid-scoring", ["disease.epochs=2"])
    assert isinstance(cfg, SeverityConfig) and cfg.name == "covid-scoring"
    assert cfg.disease["epochs"] == 2 and cfg.disease["input"] == "image+lung"
    assert load_recipe("covid-scoring", kind=None) == load_severity_config("covid-scoring")
    path = tmp_path / "r.yaml"
    path.write_text(recipe_yaml(cfg))
    assert yaml.safe_load(path.read_text())["kind"] == "severity"
    assert load_recipe(path, kind="severity") == cfg == load_severity_config(path)


@pytest.mark.parametrize("override,key", [("bogus_key=1", "bogus_key"), ("disease.targets=[x]", "disease"),
                                          ("brixia.cut=3", "brixia.cut")])
def test_unknown_or_bad_keys_fail_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_severity_config("covid-scoring", [override])


def test_kinds_do_not_mix(tmp_path):
    with pytest.raises(ConfigError, match="'severity' recipe.*cxrlab severity train"):
        load_recipe("covid-scoring")  # the learning engine's default kind
    with pytest.raises(ConfigError, match="'learning' recipe"):
        load_severity_config("phantom-diagnosis")
    bad = tmp_path / "k.yaml"
    bad.write_text("kind: poetry\nname: x\n")
    with pytest.raises(ConfigError, match="unknown recipe kind 'poetry'"):
        load_recipe(bad, kind=None)


def test_recipes_list_and_show_include_it():
    assert "cxrlab severity train covid-scoring" in list_recipes()["covid-scoring"]
    listed = runner.invoke(app, ["recipes", "list"])
    assert listed.exit_code == 0 and "covid-scoring" in listed.output
    shown = runner.invoke(app, ["recipes", "show", "covid-scoring", "--set", "zone_strategy=equal_height"])
    assert shown.exit_code == 0, shown.output
    assert "kind: severity" in shown.output and "zone_strategy: equal_height" in shown.output


def test_severity_train_accepts_the_recipe_name(tmp_path):
    # The name resolves to the recipe; the (absent) manifest is then reported, so no training starts.
    result = runner.invoke(app, ["severity", "train", "covid-scoring", "--out", str(tmp_path / "run"),
                                 "--set", f"manifests=[{tmp_path / 'missing.csv'}]"])
    assert isinstance(result.exception, InputError) and "missing.csv" in str(result.exception)
