"""Find, override, validate and save recipes.

>>> recipe = load_recipe("aloe-opacity", ["model.backbone=resnet18", "input.roi=midline"])
>>> list_recipes()  # the YAML files shipped in cxrlab/recipes/

A recipe may declare ``kind:`` (default ``learning``, the learning engine's :class:`Recipe`); other kinds are
pipelines whose config does not fit that schema (``severity``: the two-stage ``covid-scoring``). The loader
validates each file against its kind's schema, registered in :data:`RECIPE_KINDS`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from cxrlab.config import apply_overrides, parse_override  # noqa: F401  (re-exported: recipes API)
from cxrlab.errors import ConfigError, InputError
from cxrlab.recipes.schema import Recipe
from cxrlab.registry import Registry
from cxrlab.utils import atomic_write_text

RECIPE_DIR = Path(__file__).parent
DEFAULT_KIND = "learning"

# kind → a function returning its pydantic schema; imported lazily so that listing recipes stays cheap and the
# learning engine does not import the severity stack.
RECIPE_KINDS: Registry[Callable[[], type[BaseModel]]] = Registry("recipe kind")


@RECIPE_KINDS.register("learning", command="cxrlab train")
def _learning_schema() -> type[BaseModel]:
    return Recipe


@RECIPE_KINDS.register("severity", command="cxrlab severity train")
def _severity_schema() -> type[BaseModel]:
    from cxrlab.severity.config import SeverityConfig

    return SeverityConfig


@RECIPE_KINDS.register("sequence", command="cxrlab sequence cv")
def _sequence_schema() -> type[BaseModel]:
    from cxrlab.train.sequence import SequenceConfig

    return SequenceConfig


@RECIPE_KINDS.register("ensemble", command="cxrlab train")
def _ensemble_schema() -> type[BaseModel]:
    from cxrlab.train.ensemble_config import EnsembleConfig

    return EnsembleConfig


def recipe_kind(raw: dict[str, Any], source: object = "recipe") -> str:
    """The ``kind:`` a raw recipe declares (``learning`` when absent); unknown kinds are a ConfigError."""
    kind = raw.get("kind", DEFAULT_KIND)
    if not isinstance(kind, str) or kind not in RECIPE_KINDS:
        raise ConfigError(f"recipe {source}: key 'kind': unknown recipe kind {kind!r}; known: "
                          f"{', '.join(RECIPE_KINDS.list())}")
    return kind


def _kind_of(recipe: BaseModel) -> str:
    for kind in RECIPE_KINDS.list():
        if type(recipe) is RECIPE_KINDS.get(kind)():
            return kind
    raise ConfigError(f"{type(recipe).__name__} is not a recipe schema; known kinds: {', '.join(RECIPE_KINDS.list())}")


def list_recipes() -> dict[str, str]:
    """Shipped recipe names → their one-line description."""
    out = {}
    for path in sorted(RECIPE_DIR.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        description = str(raw.get("description", "")).strip().split("\n")[0]
        kind = recipe_kind(raw, path)
        if kind != DEFAULT_KIND:  # say how to run it: `cxrlab train` cannot
            description = f"[{kind}: {RECIPE_KINDS.meta(kind)['command']} {path.stem}] {description}"
        out[path.stem] = description
    return out


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if path.is_dir():
            raise InputError(path, "is a directory, not a recipe file")
        if not path.is_file():
            raise InputError(path, "recipe file does not exist")
        return path
    shipped = RECIPE_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise ConfigError(f"unknown recipe {str(name_or_path)!r}; shipped: {', '.join(list_recipes())} "
                          f"(or give a path to a .yaml file)")
    return shipped


def _format(exc: ValidationError, source: object) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        reason = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        parts.append(f"key '{key}': {reason}")
    return f"recipe {source}: " + "; ".join(parts)


def validate_recipe(raw: dict[str, Any], source: object = "recipe", kind: str | None = DEFAULT_KIND) -> Any:
    """Validate against the schema of the recipe's declared kind; ``kind`` (unless None) is the one required."""
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {source}: top level must be a mapping, got {type(raw).__name__}")
    declared = recipe_kind(raw, source)
    if kind is not None and declared != kind:
        hint = RECIPE_KINDS.meta(declared)["command"] + (f" {source}" if isinstance(source, Path) else "")
        raise ConfigError(f"recipe {source} is a {declared!r} recipe, not {kind!r}; run it with `{hint}`")
    schema = RECIPE_KINDS.get(declared)()
    try:
        return schema.model_validate({k: v for k, v in raw.items() if k != "kind"})
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from None


def load_recipe(name_or_path: str | os.PathLike | dict, overrides: Iterable[str] = (),
                kind: str | None = DEFAULT_KIND) -> Any:
    """A validated recipe from a shipped name, a YAML path or a dict, after ``key=value`` overrides.

    ``kind`` is the recipe kind the caller runs (a :class:`Recipe` for ``learning``, the default); ``None``
    accepts any kind and returns that kind's config (for listing and showing).
    """
    if isinstance(name_or_path, dict):
        raw, source = dict(name_or_path), "dict"
    else:
        path = recipe_path(name_or_path)
        raw, source = read_recipe_file(path), path
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):  # before overrides, which need a mapping to apply to
        raise ConfigError(f"recipe {source}: top level must be a mapping, got {type(raw).__name__}")
    return validate_recipe(apply_overrides(raw, list(overrides)), source, kind)


def read_recipe_file(path: Path) -> Any:
    """The YAML document of a recipe file, with errors naming the file, the line and the problem."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not a text (UTF-8) YAML file: byte {exc.start} cannot be decoded") from None
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(path, f"not valid YAML ({where}{problem})") from None


def recipe_yaml(recipe: BaseModel) -> str:
    """The resolved recipe as YAML; non-learning kinds lead with their ``kind:`` so the file reloads as one."""
    kind = _kind_of(recipe)
    head = {} if kind == DEFAULT_KIND else {"kind": kind}
    return yaml.safe_dump({**head, **recipe.model_dump(mode="json")}, sort_keys=False)


def save_recipe(recipe: BaseModel, path: str | os.PathLike) -> Path:
    atomic_write_text(path, recipe_yaml(recipe))
    return Path(path)
