"""Lung masks predicted once for the images that lack them (``cxrlab train/predict --lung-model RUN``).

>>> df, report = fill_lung_masks(df, "runs/lung", "runs/icu/lung_masks")

Each predicted mask is a PNG under ``cache_dir/<lung run id>/<image sha256>_<kind>.png``: keyed by the image's
*content* (a renamed or copied file is not predicted again, an edited one is) and by the lung run (its
checkpoint's hash: a retrained lung model never reuses an older model's masks). The row's mask columns then
point at those files, so the rest of the pipeline reads them like manual masks, and the input cache (keyed by
file path, size and time) never mixes predicted with manual masks. ``report`` records the lung run and how
many masks were predicted, reused from the cache, or given by the manifest.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from cxrlab.anatomy.default_output import RUN_DEFAULT, SHARED, run_default_convention
from cxrlab.data import schema
from cxrlab.errors import InputError
from cxrlab.utils import file_sha256

# sample-dict key of the segmenter's output -> manifest column
_OUTPUTS = {schema.KEY_RIGHT_MASK: schema.MASK_RIGHT_LUNG, schema.KEY_LEFT_MASK: schema.MASK_LEFT_LUNG,
            schema.KEY_LUNG_MASK: schema.MASK_LUNGS}
_SUFFIX = {schema.MASK_RIGHT_LUNG: "right_lung", schema.MASK_LEFT_LUNG: "left_lung", schema.MASK_LUNGS: "lungs"}


def _given(df: pd.DataFrame, column: str) -> pd.Series:
    if column not in df.columns:
        return pd.Series(False, index=df.index)
    return df[column].map(lambda v: isinstance(v, str) and bool(v.strip()))


def rows_without_lungs(df: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """Rows lacking lung masks, and the columns to fill for them: right and left lungs when the manifest has
    those columns (a row needs both), else the single ``mask_lungs`` column."""
    if schema.MASK_RIGHT_LUNG in df.columns or schema.MASK_LEFT_LUNG in df.columns \
            or schema.MASK_LUNGS not in df.columns:
        lacking = ~(_given(df, schema.MASK_RIGHT_LUNG) & _given(df, schema.MASK_LEFT_LUNG))
        return lacking, [schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG, schema.MASK_LUNGS]
    return ~_given(df, schema.MASK_LUNGS), [schema.MASK_LUNGS]


def lung_run_id(lung_run: str | os.PathLike, output: str | None = None) -> str:
    """Identity of a lung run's masks in cache keys: the hash of the checkpoint that predicts, and the lung
    output drawn when it is not the shared channels (``@<convention>``): masks of two outputs never mix."""
    ckpt = Path(lung_run) / "checkpoints" / "best.pt"
    if not ckpt.is_file():
        raise InputError(lung_run, "not a finished lung segmentation run (no checkpoints/best.pt)")
    return file_sha256(ckpt)[:16] + (f"@{output}" if output not in (None, SHARED) else "")


def trained_lung_output(run_dir: str | os.PathLike, lung_run: str | os.PathLike) -> str:
    """The lung output a training run's masks came from, when ``lung_run`` is the lung run it used (the same
    checkpoint): its recorded output (``shared`` for runs written before outputs were recorded). Otherwise
    ``RUN_DEFAULT``: the lung run's own default. Prediction uses it so a run sees the masks it was trained on,
    even after its lung run's default output changed."""
    path = Path(run_dir) / "data_filter.json"
    try:
        recorded = (json.loads(path.read_text()).get("lung_masks") or {}) if path.is_file() else {}
    except (OSError, ValueError):
        return RUN_DEFAULT
    if not recorded.get("lung_run_id") or not (Path(lung_run) / "checkpoints" / "best.pt").is_file():
        return RUN_DEFAULT
    if str(recorded["lung_run_id"]).split("@")[0] != lung_run_id(lung_run).split("@")[0]:
        return RUN_DEFAULT
    return recorded.get("lung_output") or SHARED


def fill_lung_masks(df: pd.DataFrame, lung_run: str | os.PathLike, cache_dir: str | os.PathLike,
                    batch_size: int = 16, output: str | None = RUN_DEFAULT) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``df`` (absolute image paths) with the lung-mask columns of rows lacking them filled from ``lung_run``'s
    predictions, cached in ``cache_dir``; and a report (lung run, its output, predicted / from cache / given
    counts). ``output``: the lung output to draw (default: the lung run's default output)."""
    from cxrlab.anatomy.predict import LungSegmenter
    from cxrlab.data.dataset import load_sample
    from cxrlab.io import write_png

    lacking, columns = rows_without_lungs(df)
    output = run_default_convention(lung_run) if output == RUN_DEFAULT else output
    output = None if output in (None, SHARED) else output
    run_id = lung_run_id(lung_run, output)
    folder = Path(cache_dir) / run_id
    out = df.copy()
    for column in columns:
        if column not in out.columns:
            out[column] = None
        out[column] = out[column].astype(object)
    report: dict[str, Any] = {"lung_run": str(Path(lung_run).resolve()), "lung_run_id": run_id,
                              "lung_output": output or SHARED,
                              "cache": str(folder.resolve()), "given": int((~lacking).sum()),
                              "predicted": 0, "from_cache": 0}
    todo: list[tuple[Any, dict[str, Path]]] = []
    for index in out.index[lacking.to_numpy()]:
        image = out.at[index, schema.IMAGE]
        try:
            digest = file_sha256(image)
        except OSError as exc:
            raise InputError(image, f"cannot read file: {exc.strerror or exc}", field=schema.IMAGE) from None
        paths = {c: folder / f"{digest}_{_SUFFIX[c]}.png" for c in columns}
        for column, path in paths.items():
            out.at[index, column] = str(path)
        if all(p.is_file() for p in paths.values()):
            report["from_cache"] += 1
        else:
            todo.append((index, paths))
    if todo:
        segmenter = LungSegmenter.from_run(lung_run, convention=output or SHARED)
        folder.mkdir(parents=True, exist_ok=True)
        done: set[str] = set()  # the same content listed twice is predicted once
        for start in range(0, len(todo), batch_size):
            chunk = [(i, p) for i, p in todo[start:start + batch_size] if str(next(iter(p.values()))) not in done]
            if not chunk:
                continue
            images = [load_sample(out.loc[i], [], label_columns=[])[schema.KEY_IMAGE] for i, _ in chunk]
            for (_, paths), masks in zip(chunk, segmenter.predict_batch(images)):
                for key, column in _OUTPUTS.items():
                    if column in paths:
                        write_png(paths[column], masks[key], mask=True)  # atomic
                done.add(str(next(iter(paths.values()))))
        report["predicted"] = len(done)
        report["from_cache"] += len(todo) - len(done)
    return out, report
