"""Dataset importers: each turns one dataset's native layout into a :class:`~cxrlab.data.manifest.Manifest`.

>>> m = import_dataset("kermany", "downloads/chest_xray")
>>> list_importers()
['covid_radiography', 'csv', 'cxrlab', 'folder', ...]

Adding a format is one new module in this package with a ``@register_importer("name")`` function
``(src: Path, *, out: Path | None = None, **opts) -> Manifest``; modules are discovered automatically.
``out`` is where an importer may write converted files (e.g. masks resized to their image); importers
never modify ``src``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path
from typing import Any, Callable

from cxrlab.data.manifest import Manifest
from cxrlab.errors import ConfigError, InputError
from cxrlab.registry import Registry

IMPORTERS: Registry[Callable[..., Manifest]] = Registry("importer")


def register_importer(name: str, **meta: Any) -> Callable:
    """Decorator: ``@register_importer("kermany", description="...")``."""
    return IMPORTERS.register(name, **meta)


def list_importers(pattern: str = "*") -> list[str]:
    return IMPORTERS.list(pattern)


def import_dataset(fmt: str, src: str | Path, *, out: str | Path | None = None, **opts: Any) -> Manifest:
    """Run importer ``fmt`` on ``src``; returns a Manifest with absolute paths and canonical columns."""
    importer = IMPORTERS.get(fmt)
    src = Path(src)
    if not src.exists():
        raise InputError(src, f"source for importer {fmt!r} does not exist")
    manifest = importer(src, out=Path(out) if out is not None else None, **_options(fmt, importer, opts))
    manifest.attrs.setdefault("importer", fmt)
    manifest.attrs.setdefault("src", str(src))
    return manifest


def _options(fmt: str, importer: Callable, opts: dict[str, Any]) -> dict[str, Any]:
    """Check option names against the importer's signature; turn CLI strings into bools/numbers by default type."""
    params = {n: p for n, p in inspect.signature(importer).parameters.items() if n not in {"src", "out"}}
    unknown = sorted(set(opts) - set(params))
    if unknown:
        raise ConfigError(f"importer {fmt!r} has no option {', '.join(unknown)}; options: "
                          f"{', '.join(params) or '(none)'}")
    out = {}
    for name, value in opts.items():
        default = params[name].default
        if isinstance(value, str) and isinstance(default, bool):
            if value.strip().lower() not in {"1", "0", "true", "false", "yes", "no"}:
                raise ConfigError(f"importer {fmt!r} option {name}: expected true/false, got {value!r}")
            value = value.strip().lower() in {"1", "true", "yes"}
        elif isinstance(value, str) and isinstance(default, (int, float)) and not isinstance(default, bool):
            try:
                value = type(default)(value)
            except ValueError:
                raise ConfigError(f"importer {fmt!r} option {name}: expected a number, got {value!r}") from None
        out[name] = value
    return out


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_discover()

__all__ = ["IMPORTERS", "import_dataset", "list_importers", "register_importer"]
