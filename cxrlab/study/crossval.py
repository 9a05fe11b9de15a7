"""Patient-level k-fold cross-validation of one recipe, sequentially in this process (no Ray), with pooled
out-of-fold predictions: the building block behind ``bench/learning.py``. Studies run the same folds as Ray
trials (:mod:`cxrlab.study.runner`); both pool with :func:`pooled_oof`.

A fold's run directory is skipped when finished (``metrics.json``) and resumed from ``checkpoints/last.pt`` when
interrupted, so a killed cross-validation continues where it stopped.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd


def pooled_oof(run_dirs: Sequence[str | os.PathLike], part: str = "test") -> pd.DataFrame:
    """The ``part`` rows of each fold's ``predictions.parquet``, with a ``fold`` column (the list index)."""
    frames = []
    for fold, run_dir in enumerate(run_dirs):
        pred = pd.read_parquet(Path(run_dir) / "predictions.parquet")
        frames.append(pred[pred["split"] == part].assign(fold=fold))
    return pd.concat(frames, ignore_index=True)


def cross_validate(recipe: str, data: Sequence[str | os.PathLike], out: str | os.PathLike, folds: int = 5,
                   overrides: Sequence[str] = (), log: Callable[[str], None] = print,
                   lung_model: str | os.PathLike | None = None) -> pd.DataFrame:
    """Train ``recipe`` on every fold (``split.folds``/``split.fold`` set here) into ``out/fold<k>`` and return the
    pooled out-of-fold test predictions."""
    from cxrlab.train import train

    out = Path(out)
    run_dirs = []
    for fold in range(folds):
        run_dir = out / f"fold{fold}"
        run_dirs.append(run_dir)
        if (run_dir / "metrics.json").is_file():
            continue
        t0 = time.perf_counter()
        if (run_dir / "checkpoints" / "last.pt").is_file():
            train(recipe, list(data), run_dir, resume=True, show_progress=False, lung_model=lung_model)
        else:
            train(recipe, list(data), run_dir, show_progress=False, lung_model=lung_model,
                  mask_cache=out / "lung_masks" if lung_model is not None else None,
                  overrides=[*overrides, f"split.folds={folds}", f"split.fold={fold}"])
        log(f"{out.name} fold {fold}: {time.perf_counter() - t0:.0f} s")
    return pooled_oof(run_dirs)
