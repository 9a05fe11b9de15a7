"""The study file (YAML, validated with pydantic): a base recipe, a grid over recipe keys, the sides, the data
roles, the protocol of stages and budget presets. Unknown keys are errors naming the file and the field.

A *combination* is one point of the grid (a set of ``key=value`` recipe overrides); a *trial* is one
(combination, fold, side) training run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cxrlab.errors import ConfigError, InputError

STUDY_DIR = Path(__file__).resolve().parents[1] / "recipes" / "studies"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataRole(_Strict):
    role: Literal["train", "readers"] = Field(description="train: split into folds; readers: only evaluated, "
                                              "against the readers' grades, never trained on")
    prepare: str = Field("none", description="a preparer of cxrlab.study.prepare (derives the study's columns)")


class Reader(_Strict):
    """A reader's per-lung grade: the mean of the reader's zone scores of that lung, rounded (BrixIA zones)."""

    right: list[str] = Field(min_length=1)
    left: list[str] = Field(min_length=1)


class Metric(_Strict):
    name: str = Field(description="a key of the trial scores (macro_mae, mae, ma_hcs, weighted_f1, ...)")
    goal: Literal["min", "max"] = "min"


class Stage(_Strict):
    """One protocol stage. ``screen``: every combination on ``fold``, ranked by ``rank_by``, the best ``top``
    kept; ``cv``: the kept combinations on every fold; ``select``: the best by ``criterion`` (ranks of each
    metric summed over the pooled out-of-fold scores, ties broken by the first metric); ``final``: the chosen
    combination retrained on a fresh patient split (``seed``) and evaluated on its test part and the readers."""

    kind: Literal["screen", "cv", "select", "final"]
    fold: int = Field(0, ge=0)
    rank_by: Metric | None = None
    top: int = Field(5, ge=1)
    criterion: list[Metric] = Field(default_factory=list)
    seed: int = Field(1, description="final: the fresh split's seed (the folds use the study seed)")
    ratios: list[float] = Field(default_factory=lambda: [0.7, 0.15, 0.15])


class Preset(_Strict):
    """Budget overrides: recipe keys applied to every trial, plus data sub-sampling and HCS image count."""

    description: str = ""
    set: list[str] = Field(default_factory=list, description="recipe overrides (key=value) for every trial")
    max_patients: int | None = Field(None, ge=10, description="train data: keep this many patients (seeded)")
    hcs_images: int | None = Field(None, ge=0, description="test images per trial scored for the HCS")
    grid: dict[str, list[Any]] | None = Field(None, description="replaces the study grid (e.g. fewer values)")
    folds: int | None = Field(None, ge=2)
    top: int | None = Field(None, ge=1, description="replaces every screen stage's top")


class StudySpec(_Strict):
    name: str
    description: str = ""
    reference: str = ""
    recipe: str = Field(description="base recipe: a shipped name or a YAML path")
    set: list[str] = Field(default_factory=list, description="recipe overrides applied to every trial")
    grid: dict[str, list[Any]] = Field(description="recipe key -> values; the combinations are their product")
    grid_labels: dict[str, str] = Field(default_factory=dict, description="explanations of grid values, for the report")
    sides: list[Literal["right", "left"]] | None = Field(
        None, description="one independent model per side (opacity task's lung column); null: one model for both")
    task_column: str = Field("opacity", description="the graded target; side models grade <task_column>_<side>")
    n_grades: int = Field(4, ge=2)
    data: list[DataRole] = Field(default_factory=lambda: [DataRole(role="train")], min_length=1)
    readers: dict[str, Reader] = Field(default_factory=dict, description="reader name -> zone columns")
    folds: int = Field(5, ge=2)
    seed: int = 0
    stratify: str | None = None
    hcs: Literal["nonzero", "mass"] = Field("nonzero", description="HCS definition (cxrlab.explain.hcs)")
    hcs_images: int = Field(50, ge=0, description="test images per trial scored for the HCS (0: none)")
    subgroups: list[str] = Field(default_factory=lambda: ["sex", "age", "view", "source_dataset"])
    selection_rule: str = Field("", description="the selection rule in words, printed in the report")
    notes: list[str] = Field(default_factory=list, description="statements printed in the report")
    protocol: list[Stage] = Field(min_length=1)
    presets: dict[str, Preset] = Field(default_factory=dict)

    @field_validator("grid")
    @classmethod
    def _grid_values(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"grid.{key} lists no value")
            if len({repr(x) for x in values}) != len(values):
                raise ValueError(f"grid.{key} repeats a value: {values}")
        return v

    @model_validator(mode="after")
    def _protocol_order(self) -> "StudySpec":
        kinds = [s.kind for s in self.protocol]
        if kinds[0] not in ("screen", "cv"):
            raise ValueError(f"protocol must start with screen or cv, got {kinds[0]}")
        for i, s in enumerate(self.protocol):
            if s.kind == "screen" and s.rank_by is None:
                raise ValueError(f"protocol.{i} (screen) needs rank_by")
            if s.kind == "select" and not s.criterion:
                raise ValueError(f"protocol.{i} (select) needs a criterion")
            if s.kind in ("select", "final") and "cv" not in kinds[:i]:
                raise ValueError(f"protocol.{i} ({s.kind}) must come after a cv stage")
            if s.kind == "screen" and s.fold >= self.folds:
                raise ValueError(f"protocol.{i}: fold {s.fold} >= folds {self.folds}")
        return self

    def with_preset(self, name: str | None) -> "StudySpec":
        """The study with preset ``name``'s overrides applied (``None``: unchanged)."""
        if name is None:
            return self
        if name not in self.presets:
            raise ConfigError(f"study {self.name}: no preset {name!r} (presets: {', '.join(self.presets) or 'none'})")
        p = self.presets[name]
        update: dict[str, Any] = {"set": [*self.set, *p.set]}
        if p.grid is not None:
            update["grid"] = p.grid
        if p.hcs_images is not None:
            update["hcs_images"] = p.hcs_images
        if p.folds is not None:
            update["folds"] = p.folds
        if p.top is not None:
            update["protocol"] = [s.model_copy(update={"top": p.top}) if s.kind == "screen" else s
                                  for s in self.protocol]
        return self.model_copy(update=update)


def study_path(name_or_path: str | os.PathLike) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise InputError(path, "no such study file")
        return path
    shipped = STUDY_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        known = ", ".join(sorted(p.stem for p in STUDY_DIR.glob("*.yaml")))
        raise ConfigError(f"unknown study {str(name_or_path)!r} (shipped: {known}; or give a path to a .yaml file)")
    return shipped


def list_studies() -> dict[str, str]:
    out = {}
    for path in sorted(STUDY_DIR.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        out[path.stem] = str(raw.get("description", "")).split(";")[0]
    return out


def load_study(name_or_path: str | os.PathLike | dict) -> StudySpec:
    """A validated study; errors name the file, the field and the reason in one line."""
    if isinstance(name_or_path, dict):
        raw, source = name_or_path, "study"
    else:
        path = study_path(name_or_path)
        source = path
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise InputError(path, f"not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
        if not isinstance(raw, dict):
            raise InputError(path, "a study file is a YAML mapping (name, recipe, grid, protocol, ...)")
    try:
        return StudySpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "study"
        msg = err["msg"].removeprefix("Value error, ")
        more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise InputError(source, f"{msg}{more}", field=field) from None
