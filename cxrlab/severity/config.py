"""Severity configs (pydantic, unknown keys are errors): the training config and the fitted scoring parameters.

A severity run directory::

    runs/severity/<name>/
      recipe.yaml        the resolved SeverityConfig (incl. seeds)
      disease/           the Stage II segmentation run (a normal anatomy run directory); its threshold.json is
                         the mask threshold fitted on the val images (``fit_disease_threshold``)
      scoring.json       ScoringParams: zone strategy, zone threshold, Brixia cut-points, what they were fitted on
      severity.json      {"lung_run", "disease_run"}: what SeverityPipeline.from_run loads
      predictions.parquet, metrics.json   (written by ``cxrlab severity evaluate``)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cxrlab.config import apply_overrides, read_yaml_mapping
from cxrlab.errors import ConfigError, InputError
from cxrlab.severity.scores import DEFAULT_BRIXIA_CUTPOINTS, DEFAULT_ZONE_THRESHOLD
from cxrlab.utils import atomic_write_json

ZoneStrategy = Literal["equal_area", "equal_height"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScoringParams(_Strict):
    """Everything that turns masks into scores, besides the masks themselves."""

    zone_strategy: ZoneStrategy = "equal_area"
    zone_threshold: float = DEFAULT_ZONE_THRESHOLD
    brixia_cutpoints: tuple[float, float, float] = DEFAULT_BRIXIA_CUTPOINTS
    fitted_on: dict[str, Any] = Field(default_factory=dict)  # provenance: rows, reference, split

    @field_validator("brixia_cutpoints")
    @classmethod
    def _ascending(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not v[0] <= v[1] <= v[2]:
            raise ValueError("brixia_cutpoints must be ascending")
        return v

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.model_dump(mode="json"))

    @classmethod
    def load(cls, path: str | Path) -> "ScoringParams":
        path = Path(path)
        if not path.exists():
            raise InputError(path, "scoring parameters file does not exist")
        try:
            return cls(**json.loads(path.read_text()))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise InputError(path, f"invalid scoring parameters: {exc}") from None


class BrixiaFitConfig(_Strict):
    """Where the Brixia cut-points are fitted: BrixIA-scored images, patient-level split, train part only."""

    manifests: list[str] = Field(default_factory=list)  # empty: the training manifests' rows with Brixia scores
    columns_prefix: str = "brixia_"  # brixia_A..F (senior reader in cxrlab manifests); brixia_junior_ for the other
    test_fraction: float = Field(0.3, ge=0, lt=1)  # external manifests only: held-out patients for evaluation
    seed: int = 0


class SeverityConfig(_Strict):
    """The ``covid-scoring`` pipeline: a Stage I lung run + Stage II disease training + fitted scoring."""

    name: str = "covid-scoring"
    description: str = ""
    reference: str = ""
    lung_run: str
    manifests: list[str]
    # Any anatomy SegmentationConfig key for the disease model (arch: one of the nine smp decoders, encoder,
    # input: image | image+lung, size, epochs, ...). targets is fixed to [mask_disease].
    disease: dict[str, Any] = Field(default_factory=dict)
    # Rows without a disease mask whose finding is listed here are disease-free: they train with an empty mask
    # (teaching "no disease"); other rows without a mask (e.g. non-COVID pneumonia, never annotated) are dropped.
    disease_free_findings: list[str] = Field(default_factory=lambda: ["normal"])
    # balanced: each epoch draws images with and without disease equally (anatomy's balanced draw over the
    # groups "<source>|disease" / "<source>|clear", column sampling_group of the derived manifest; or over
    # group_column); natural: every training image once per epoch.
    sampling: Literal["balanced", "natural"] = "balanced"
    # Balance on any manifest column instead (e.g. has_disease, source_dataset, sex); None = as above.
    group_column: str | None = None
    # Choose Stage II's mask threshold on the val images (per-image Dice in the predicted lungs, disease and clear
    # films counted as groups) and record it in the disease run's threshold.json; False keeps the recipe's cut.
    fit_disease_threshold: bool = True
    zone_strategy: ZoneStrategy = "equal_area"
    zone_reference: Literal["mask", "brixia"] = "mask"  # what "zone affected" means when fitting the threshold
    brixia: BrixiaFitConfig = Field(default_factory=BrixiaFitConfig)
    seed: int = 0
    out: str = "runs/severity"

    @field_validator("disease")
    @classmethod
    def _no_targets(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in ("targets", "manifests", "out", "name", "group_column"):
            if key in v:
                hint = " (use the severity config's own group_column)" if key == "group_column" else ""
                raise ValueError(f"disease.{key} is set by the severity pipeline; remove it{hint}")
        return v


def load_severity_config(source: str | Path | dict[str, Any] | SeverityConfig,
                         overrides: list[str] | None = None) -> SeverityConfig:
    """A recipe name (``covid-scoring``), a YAML file, a dict or a config, plus ``key=value`` overrides
    (``disease.epochs=5``) → validated. Files are recipes of kind ``severity`` (``kind:`` may be left out)."""
    from cxrlab.recipes.loader import RECIPE_DIR, recipe_path, validate_recipe  # lazy: no import cycle

    if isinstance(source, SeverityConfig):
        data, where = source.model_dump(mode="json"), "config"
    elif isinstance(source, dict):
        data, where = dict(source), "dict"
    else:
        try:
            path = recipe_path(source)
        except InputError:
            raise ConfigError(f"{source}: config file does not exist") from None
        data, where = read_yaml_mapping(path, "severity config"), path
    if not (isinstance(where, Path) and where.parent == RECIPE_DIR):  # run directories save it without kind:
        data.setdefault("kind", "severity")
    return validate_recipe(apply_overrides(data, overrides or []), f"{where} (severity config)", kind="severity")
