"""Reading YAML configs: one place that turns a file into a mapping or a clear ``ConfigError``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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
