"""Find, override, validate and save recipes.

>>> recipe = load_recipe("aloe-opacity", ["model.backbone=resnet18", "input.roi=midline"])
>>> list_recipes()  # the YAML files shipped in cxrlab/recipes/
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import ValidationError

from cxrlab.errors import ConfigError, InputError
from cxrlab.recipes.schema import Recipe
from cxrlab.utils import atomic_write_text

RECIPE_DIR = Path(__file__).parent


def list_recipes() -> dict[str, str]:
    """Shipped recipe names → their one-line description."""
    out = {}
    for path in sorted(RECIPE_DIR.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        out[path.stem] = str(raw.get("description", "")).strip().split("\n")[0]
    return out


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise InputError(path, "recipe file does not exist")
        return path
    shipped = RECIPE_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise ConfigError(f"unknown recipe {str(name_or_path)!r}; shipped: {', '.join(list_recipes())} "
                          f"(or give a path to a .yaml file)")
    return shipped


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.stages.1.lr=1e-5`` → (["train", "stages", "1", "lr"], 1e-5); the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, value = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value {value!r} is not valid YAML ({exc})") from None
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node: Any = raw
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[:i])} has {len(node)} item(s), "
                                      f"no index {part}")
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, (dict, list)):
                    raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[:i + 1])} is not a section")
        last = path[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[:-1])} has {len(node)} item(s), "
                                  f"no index {last}")
            node[int(last)] = value
        else:
            node[last] = value
    return raw


def _format(exc: ValidationError, source: object) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        reason = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        parts.append(f"key '{key}': {reason}")
    return f"recipe {source}: " + "; ".join(parts)


def validate_recipe(raw: dict[str, Any], source: object = "recipe") -> Recipe:
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {source}: top level must be a mapping, got {type(raw).__name__}")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from None


def load_recipe(name_or_path: str | os.PathLike | dict, overrides: Iterable[str] = ()) -> Recipe:
    """A validated recipe from a shipped name, a YAML path or a dict, after ``key=value`` overrides."""
    if isinstance(name_or_path, dict):
        raw, source = dict(name_or_path), "dict"
    else:
        path = recipe_path(name_or_path)
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise InputError(path, f"not valid YAML: {exc}") from None
        source = path
    return validate_recipe(apply_overrides(raw or {}, list(overrides)), source)


def recipe_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> Path:
    atomic_write_text(path, recipe_yaml(recipe))
    return Path(path)
