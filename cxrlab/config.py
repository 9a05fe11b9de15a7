"""Configs: reading YAML files and applying ``--set key=value`` overrides, with clear ``ConfigError``s."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml

from cxrlab.errors import ConfigError


def read_yaml_mapping(path: str | os.PathLike, what: str = "config") -> dict[str, Any]:
    """The top-level mapping of a YAML file; a missing file, bad YAML or a non-mapping is a ``ConfigError``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: expected a mapping at the top level")
    return data


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
    """A copy of ``raw`` with each ``key.path=value`` applied; list items by index (``train.stages.1.lr``)."""
    raw = copy.deepcopy(raw)
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


Model = TypeVar("Model")


def load_validated(model: type[Model], source: Any, overrides: Iterable[str] | None, what: str) -> Model:
    """A pydantic config from a YAML path, a dict, an instance or None (defaults), plus ``key=value``
    overrides; every invalid key or value is named in one ``ConfigError`` ("invalid <what>: key: reason")."""
    from pydantic import BaseModel, ValidationError

    if isinstance(source, BaseModel):
        raw: dict[str, Any] = source.model_dump()
    elif isinstance(source, dict):
        raw = dict(source)
    elif source is None:
        raw = {}
    else:
        raw = read_yaml_mapping(source, what)
    raw = apply_overrides(raw, overrides or [])
    try:
        return model.model_validate(raw)  # type: ignore[attr-defined]
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid {what}: {msgs}") from None
