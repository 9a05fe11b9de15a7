"""A temporary, time-limited store for analysis results (JSON + rendered PNGs), one folder per result id.

Only de-identified derivatives are kept: the rendered pixels and the JSON report; never the uploaded bytes or
any DICOM attribute. Entries older than the TTL are deleted on every write and by :meth:`sweep`.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np

from cxrlab.utils import atomic_write_bytes, atomic_write_json

_ID = re.compile(r"^[0-9a-f]{32}$")
_NAME = re.compile(r"^[a-z0-9_]{1,32}\.(png|json)$")


class ResultStore:
    def __init__(self, root: str | Path | None = None, ttl_s: float = 3600.0):
        self._owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="cxrlab-results-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self.ttl_s = float(ttl_s)
        self._lock = threading.Lock()

    def new_id(self) -> str:
        return uuid.uuid4().hex

    def put(self, result_id: str, report: Mapping[str, Any], images: Mapping[str, np.ndarray]) -> None:
        """Write ``report`` as ``result.json`` and each image (uint8 gray/BGR/BGRA) as ``<name>.png``."""
        self.sweep()
        folder = self.root / result_id
        folder.mkdir(parents=True, exist_ok=True)
        for name, arr in images.items():
            ok, buf = cv2.imencode(".png", arr)
            if not ok:
                raise RuntimeError(f"could not encode {name} as PNG")
            atomic_write_bytes(folder / f"{name}.png", buf.tobytes())
        atomic_write_json(folder / "result.json", report)
        (folder / ".created").write_text(repr(time.time()))

    def path(self, result_id: str, name: str) -> Path | None:
        """The stored file, or None if the id/name is malformed, unknown or expired."""
        if not _ID.match(result_id) or not _NAME.match(name):
            return None
        folder = self.root / result_id
        if self._expired(folder):
            return None
        p = folder / name
        return p if p.is_file() else None

    def _expired(self, folder: Path) -> bool:
        stamp = folder / ".created"
        try:
            created = float(stamp.read_text())
        except (OSError, ValueError):
            return True
        return time.time() - created > self.ttl_s

    def sweep(self) -> int:
        """Delete expired results; return how many were removed."""
        removed = 0
        with self._lock:
            for folder in self.root.iterdir():
                if folder.is_dir() and _ID.match(folder.name) and self._expired(folder):
                    # A folder being written has no stamp yet: give it a minute before calling it expired.
                    if not (folder / ".created").exists() and time.time() - folder.stat().st_mtime < 60:
                        continue
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
        return removed

    def close(self) -> None:
        """Remove the whole store if this object created it (service shutdown)."""
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)
