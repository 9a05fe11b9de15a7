"""The ``ensemble`` recipe kind (issue #18, FLANNEL): base learners trained per fold of one shared patient-level
K-fold split, then a combiner trained on their out-of-fold probabilities.

An ensemble recipe names the data handling once (``data``: every ``--data`` manifest pooled, split by patient),
the diagnosis task once (``task``: column, classes, class_map), the learning-recipe keys every learner shares
(``base``: input/model/train) and, per learner, the keys it changes (``learners[i].recipe``, deep-merged over
``base``). Each learner's resolved learning recipe is validated when the ensemble recipe is loaded, so a bad key
in any learner fails in a second, naming the learner.

>>> cfg = load_recipe("flannel-patch-quick", kind="ensemble")
>>> cfg.learner_recipe(cfg.learners[0])          # a validated cxrlab.recipes.schema.Recipe
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import Field, field_validator, model_validator

from cxrlab.errors import ConfigError
from cxrlab.recipes.schema import DataSpec, Recipe, _Strict

KIND = "ensemble"


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``: mappings merged key by key, anything else replaced."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class LearnerSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="learner name (a folder name)")
    recipe: dict[str, Any] = Field(default_factory=dict, description="learning-recipe keys merged over `base`")


class CombinerSpec(_Strict):
    name: str = Field(description="combiner (cxrlab.ensemble.COMBINERS): neural_tanh, neural_softmax, mean, vote, "
                      "stacking")
    options: dict[str, Any] = Field(default_factory=dict, description="combiner options, e.g. {gamma: 2.0}")

    @model_validator(mode="after")
    def _known(self) -> "CombinerSpec":
        from cxrlab.ensemble import create_combiner

        try:
            create_combiner(self.name, **self.options)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self


class EnsembleConfig(_Strict):
    name: str
    description: str = ""
    reference: str = ""
    seed: int = 0
    data: DataSpec = Field(default_factory=lambda: DataSpec(extra="pooled"),
                           description="as a learning recipe's; extra must be `pooled` (every manifest split)")
    folds: int = Field(5, ge=2, le=20, description="patient-level folds shared by every learner")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="share of a fold's training patients used for "
                                "validation (early stopping) of each base model")
    stratify: str | None = Field(None, description="column the folds are stratified on (default: the task column)")
    join_same_films: bool = Field(False, description="decode every film and keep patients who share one (the "
                                  "same pixels under two patient ids; `cxrlab data validate --content` lists them) "
                                  "in one fold and one side of each fold's train/val split")
    task: dict[str, Any] = Field(description="the diagnosis task: {kind: diagnosis, column, classes, class_map}")
    base: dict[str, Any] = Field(default_factory=dict, description="learning-recipe keys shared by every learner "
                                 "(input, model, train)")
    learners: list[LearnerSpec] = Field(min_length=1)
    combiner: CombinerSpec = Field(default_factory=lambda: CombinerSpec(name="neural_tanh"),
                                   description="the ensemble's combiner (used by predict)")
    baselines: list[CombinerSpec] = Field(default_factory=list, description="other combiners, evaluated "
                                          "out-of-fold beside it (metrics.json)")

    @field_validator("data")
    @classmethod
    def _pooled(cls, v: DataSpec) -> DataSpec:
        if v.extra != "pooled":
            raise ValueError("an ensemble pools every --data manifest and splits them by patient: set "
                             "data.extra: pooled")
        return v

    @field_validator("task")
    @classmethod
    def _diagnosis(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v.get("kind") != "diagnosis":
            raise ValueError(f"the ensemble's task must be kind: diagnosis, got {v.get('kind')!r}")
        return v

    @field_validator("base")
    @classmethod
    def _base_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        owned = sorted(set(v) & {"name", "seed", "data", "split", "tasks"})
        if owned:
            raise ValueError(f"base sets {', '.join(owned)}, which the ensemble sets for every learner "
                             "(use the top-level data/task/seed/folds)")
        return v

    @model_validator(mode="after")
    def _learners_valid(self) -> "EnsembleConfig":
        names = [lr.name for lr in self.learners]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"learner name(s) used twice: {', '.join(dup)}")
        for i, spec in enumerate(self.learners):
            self.learner_recipe(spec, where=f"learners.{i} ({spec.name})")
        combiners = [self.combiner.name] + [b.name for b in self.baselines]
        if len(set(combiners)) != len(combiners):
            raise ValueError(f"combiner listed twice among combiner and baselines: {combiners}")
        return self

    @property
    def stratify_column(self) -> str:
        return self.stratify or self.task.get("column", "finding")

    @property
    def classes(self) -> list[str]:
        from cxrlab.tasks import TaskSet

        return list(TaskSet.from_config([self.task]).tasks[0].classes)

    def learner_recipe(self, spec: LearnerSpec, where: str | None = None) -> Recipe:
        """The learner's learning recipe: ``base`` + its own keys, with the ensemble's data, task and seed."""
        from pydantic import ValidationError

        from cxrlab.recipes.loader import _format

        owned = sorted(set(spec.recipe) & {"name", "seed", "data", "split", "tasks"})
        if owned:
            raise ValueError(f"{where or spec.name}: recipe sets {', '.join(owned)}, which the ensemble sets")
        raw = deep_merge(self.base, spec.recipe)
        raw.update(name=f"{self.name}.{spec.name}", seed=self.seed, data=self.data.model_dump(),
                   tasks=[self.task], description=f"base learner {spec.name} of ensemble {self.name}")
        try:
            return Recipe.model_validate(raw)
        except ValidationError as exc:
            raise ValueError(_format(exc, where or spec.name).removeprefix("recipe ")) from None
