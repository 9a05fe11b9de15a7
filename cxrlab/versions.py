"""The software versions a result depends on, recorded beside it (run metrics.json, evaluation reports).

No heavy imports: the versions come from the installed packages' metadata.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

PACKAGES = ("cxrlab", "numpy", "pandas", "scikit-learn", "scipy", "matplotlib", "torch", "torchvision", "timm",
            "grad-cam", "segmentation-models-pytorch")


def cxrlab_commit() -> str | None:
    """The git commit cxrlab runs from when it is a checkout (``+dirty`` with uncommitted changes), else None."""
    source = Path(__file__).resolve().parent.parent
    if not (source / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None


def software_versions() -> dict[str, str]:
    """Python, the platform, each of :data:`PACKAGES` ("not installed" when absent) and cxrlab's commit."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    commit = cxrlab_commit()
    if commit:
        out["cxrlab_commit"] = commit
    return out
