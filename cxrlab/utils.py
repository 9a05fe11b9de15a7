"""Small shared helpers: atomic writes, cache location, seeding, hashing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def cxrlab_home() -> Path:
    """Where caches live (feature caches, weight store): ``$CXRLAB_HOME`` or ``~/.cache/cxrlab``."""
    return Path(os.environ.get("CXRLAB_HOME", Path.home() / ".cache" / "cxrlab"))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds.

    Readers never see a half-written file and a crash never destroys the previous version.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes), dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600 files; give the result the mode a plain open() would (umask applied).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[^.]+)*$")  # what atomic_path's mkstemp names look like


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an interrupted :func:`atomic_path` left under ``directory`` (recursively).

    Only for a directory no other process is writing to (a run directory being resumed): after ``kill -9``
    half-written temporaries stay behind; the files they were to replace are intact. Returns what was removed.
    """
    removed = []
    for path in Path(directory).rglob(".*.tmp*"):
        if path.is_file() and _TEMP_NAME.match(path.name):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and (if imported) torch. Recorded by every run in its resolved recipe."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # io/data/evaluate must work without torch
        pass


def salted_hash(value: str, salt: str | None = None, length: int = 16) -> str:
    """One-way pseudonym for identifiers (patient id, accession). Salt: argument, else ``$CXRLAB_SALT``."""
    salt = salt if salt is not None else os.environ.get("CXRLAB_SALT", "cxrlab-default-salt")
    return hashlib.sha256(f"{salt}:{value}".encode("utf-8")).hexdigest()[:length]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def json_safe(obj: Any) -> Any:
    """NaN/inf → None (JSON has no NaN), numpy scalars → Python numbers, recursively."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
