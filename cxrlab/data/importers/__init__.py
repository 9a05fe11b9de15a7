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
import pkgutil
from pathlib import Path
from typing import Any, Callable

from cxrlab.data.manifest import Manifest
from cxrlab.errors import InputError
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
    manifest = importer(src, out=Path(out) if out is not None else None, **opts)
    manifest.attrs.setdefault("importer", fmt)
    manifest.attrs.setdefault("src", str(src))
    return manifest


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_discover()

__all__ = ["IMPORTERS", "import_dataset", "list_importers", "register_importer"]
