"""Severity config and scoring-parameter validation: bad keys and values are ConfigError/InputError sentences."""

from __future__ import annotations

import pytest

from cxrlab.errors import ConfigError, InputError
from cxrlab.severity.config import ScoringParams, load_severity_config

BASE = {"lung_run": "runs/lung", "manifests": ["m.csv"]}


def test_defaults_and_overrides():
    cfg = load_severity_config(BASE, ["disease.epochs=3", "zone_strategy=equal_height"])
    assert cfg.disease == {"epochs": 3}
    assert cfg.zone_strategy == "equal_height" and cfg.sampling == "balanced"


@pytest.mark.parametrize("bad,match", [
    ({"unknown_key": 1}, "unknown_key"),
    ({"zone_strategy": "thirds"}, "zone_strategy"),
    ({"disease": {"targets": ["mask_lungs"]}}, "disease.targets is set by the severity pipeline"),
    ({"sampling": "oversample"}, "sampling"),
])
def test_bad_config_is_a_config_error(bad, match):
    with pytest.raises(ConfigError, match=match):
        load_severity_config({**BASE, **bad})


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_severity_config(tmp_path / "nope.yaml")


def test_scoring_params_roundtrip_and_validation(tmp_path):
    p = ScoringParams(zone_threshold=0.12, brixia_cutpoints=(0.05, 0.3, 0.7), fitted_on={"zone_threshold": "x"})
    p.save(tmp_path / "scoring.json")
    assert ScoringParams.load(tmp_path / "scoring.json") == p
    with pytest.raises(ValueError, match="ascending"):
        ScoringParams(brixia_cutpoints=(0.5, 0.2, 0.7))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="invalid scoring parameters"):
        ScoringParams.load(tmp_path / "bad.json")
