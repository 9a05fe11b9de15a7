"""Shared fixtures: one phantom dataset per test session (128 px, 40 patients, every diagnosis in every split).

Treat the folder as read-only: copy it (``shutil.copytree``) before changing anything in it.
"""

from __future__ import annotations

import os
from pathlib import Path

# Passive OpenMP waiting: spinning threads starve the other core on small CI machines (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from cxrlab.data.manifest import Manifest, load_manifest
from cxrlab.data.phantom import generate_phantom

PHANTOM_PATIENTS = 40
PHANTOM_SIZE = 128
PHANTOM_SEED = 0


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with ``manifest.csv``, ``images/`` and ``masks/<kind>/`` (lungs, right_lung, left_lung, heart,
    disease, consolidation), generated once per session."""
    root = tmp_path_factory.mktemp("phantom")
    generate_phantom(root, n_patients=PHANTOM_PATIENTS, size=PHANTOM_SIZE, seed=PHANTOM_SEED)
    return root


@pytest.fixture(scope="session")
def phantom_manifest(phantom_root: Path) -> Manifest:
    """The phantom's Manifest (absolute paths in ``.df``). Do not mutate ``.df`` in place: copy it."""
    return load_manifest(phantom_root / "manifest.csv")
