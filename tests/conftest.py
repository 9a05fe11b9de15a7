"""Shared fixtures: one phantom dataset per test session (128 px, 40 patients, every diagnosis in every split).

Treat the folder as read-only: copy it (``shutil.copytree``) before changing anything in it.
"""

from __future__ import annotations

import os
from pathlib import Path

# Passive OpenMP waiting: spinning threads starve the other core on small CI machines (set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# `make test` runs one pytest-xdist worker per core; each keeps to one thread (also in the commands it starts), as
# two workers with two threads each on two cores only contend.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

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


@pytest.fixture(scope="session")
def lung_stage_rows(service_runs):
    """``rows(paths, out_dir)``: a manifest frame of the images with the lung masks the service's lung stage draws
    for them (written as PNGs), so ``predict`` can be compared with the service on the same masks."""
    import pandas as pd

    from cxrlab.anatomy.predict import LungSegmenter
    from cxrlab.data import schema
    from cxrlab.io import read_image, write_png

    segmenter = LungSegmenter.from_run(service_runs["lung"], precision="fp32")  # as the lung stage runs it
    columns = ((schema.KEY_LUNG_MASK, schema.MASK_LUNGS), (schema.KEY_RIGHT_MASK, schema.MASK_RIGHT_LUNG),
               (schema.KEY_LEFT_MASK, schema.MASK_LEFT_LUNG))

    def rows(paths, out_dir: Path) -> "pd.DataFrame":
        out = []
        for path in map(Path, paths):
            masks = segmenter.predict(read_image(str(path))[0])
            row = {schema.IMAGE: str(path)}
            for key, column in columns:
                row[column] = str(write_png(out_dir / f"{path.stem}_{column}.png", masks[key], mask=True))
            out.append(row)
        return pd.DataFrame(out)

    return rows


@pytest.fixture(scope="session")
def service_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny lung, severity, diagnosis and ICU runs trained by the packages' own trainers, plus their
    ``service.yaml`` (key ``config``); shared by the service, export and viewer tests."""
    from cxrlab.serve.samples import train_tiny_runs

    base = tmp_path_factory.getbasetemp()
    manifest = base / "service_phantom" / "manifest.csv"
    if not manifest.is_file():
        generate_phantom(manifest.parent, n_patients=8, size=128, seed=1, max_studies=1)
    return train_tiny_runs(base / "service_runs", manifest)


@pytest.fixture
def other_films():
    """``other_films(df, folder)``: the rows pointing at copies of their images, i.e. a second dataset's films
    (training refuses a film listed twice, so fused test data may not re-use the phantom's own files)."""
    import shutil

    import pandas as pd

    def copy_rows(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
        folder.mkdir(parents=True, exist_ok=True)
        out = df.copy()
        out["image"] = [shutil.copy(p, folder / f"{i}_{Path(p).name}") for i, p in enumerate(df["image"])]
        return out

    return copy_rows


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a 2-core machine extra threads spin and stall (docs/benchmarks/learning.md)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cxrlab_home(tmp_path_factory: pytest.TempPathFactory):
    """A private ``CXRLAB_HOME`` (feature and mask caches) for one test module, restored afterwards."""
    path = tmp_path_factory.mktemp("cxrlab_home")
    old = os.environ.get("CXRLAB_HOME")
    os.environ["CXRLAB_HOME"] = str(path)
    yield path
    if old is None:
        del os.environ["CXRLAB_HOME"]
    else:
        os.environ["CXRLAB_HOME"] = old
