"""Run an arm on the shared folds and pool its predictions (validation and test rows, with ``fold``).

Fine-tuned arms: ``cxrlab.train.train`` per fold with ``split=fold<i>.csv`` (finished folds are skipped,
interrupted ones resumed). Head arms: one small MLP per fold on frozen embeddings, trained on the fold's train
patients (plus train-only rows of patients outside its val/test), early-stopped on its val patients.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.data.fusion import train_only_rows
from cxrlab.data.splits import SPLIT
from cxrlab.errors import InputError

PROB = "prob"
Y = "y"


def finetune_cv(recipe: str, data: Sequence[str | os.PathLike], split_files: Sequence[Path], out: str | os.PathLike,
                column: str, overrides: Sequence[str] = (), lung_model: str | os.PathLike | None = None,
                log: Callable[[str], None] = print) -> pd.DataFrame:
    """Train ``recipe`` once per split file into ``out/fold<i>``; pooled val + test predictions."""
    from cxrlab.train import train

    out = Path(out)
    frames = []
    for fold, split in enumerate(split_files):
        run_dir = out / f"fold{fold}"
        if not (run_dir / "metrics.json").is_file():
            t0 = time.perf_counter()
            cache = out.parent / "lung_masks" if lung_model is not None else None
            if (run_dir / "checkpoints" / "last.pt").is_file():
                train(recipe, list(data), run_dir, resume=True, show_progress=False, lung_model=lung_model,
                      mask_cache=cache)
            else:
                train(recipe, list(data), run_dir, show_progress=False, split=split, lung_model=lung_model,
                      mask_cache=cache, overrides=list(overrides))
            log(f"{out.name} fold {fold}: {time.perf_counter() - t0:.0f} s")
        pred = pd.read_parquet(run_dir / "predictions.parquet")
        prob = f"prob_{column}" if f"prob_{column}" in pred.columns else f"{column}_prob"
        if prob not in pred.columns:
            raise InputError(run_dir / "predictions.parquet", f"no probability column for {column}", field=prob)
        pred = pred[pred[SPLIT].isin(["val", "test"])]
        frames.append(pd.DataFrame({schema.IMAGE: pred[schema.IMAGE].astype(str).to_numpy(),
                                    schema.PATIENT_ID: pred[schema.PATIENT_ID].astype(str).to_numpy(),
                                    "fold": fold, SPLIT: pred[SPLIT].to_numpy(),
                                    Y: pd.to_numeric(pred[column], errors="coerce").to_numpy(),
                                    PROB: pred[prob].to_numpy(float)}))
    return pd.concat(frames, ignore_index=True)


def head_cv(vectors: np.ndarray, meta: pd.DataFrame, folds: Sequence[pd.DataFrame], column: str,
            cfg=None, allow_pretrain_overlap: bool = False) -> pd.DataFrame:
    """One head per fold on ``vectors`` (rows of ``meta``); primary rows are placed by the fold's split table,
    train-only rows (``train_only`` column) train unless their patient is in the fold's val/test. Vectors of a
    pretrained backbone that saw a val/test patient are refused (cxrlab.pretrain.guard) unless allowed."""
    from cxrlab.pretrain.guard import check_embedding_overlap
    from cxrlab.train.embedding_head import HeadConfig, fit_head, predict_head

    cfg = cfg or HeadConfig()
    if len(meta) != len(vectors):
        raise InputError("embeddings", f"{len(vectors)} vectors for {len(meta)} rows")
    meta = meta.reset_index(drop=True)
    y = pd.to_numeric(meta[column], errors="coerce").to_numpy(float)
    image = meta[schema.IMAGE].astype(str).to_numpy()
    pids = meta[schema.PATIENT_ID].astype(str).to_numpy()
    only = train_only_rows(meta)
    out = []
    for fold, split in enumerate(folds):
        part_of = dict(zip(split[schema.IMAGE].astype(str), split[SPLIT]))
        part = np.array([part_of.get(i) if not o else None for i, o in zip(image, only)], dtype=object)
        missing = set(split[schema.IMAGE].astype(str)) - set(image[~only])
        if missing:
            raise InputError("embeddings", f"{len(missing)} fold image(s) without an embedding, first: "
                                           f"{sorted(missing)[0]}")
        check_embedding_overlap(meta, np.isin(part, ["val", "test"]), allow_pretrain_overlap)
        held = set(pids[np.isin(part, ["val", "test"])])
        fused = only & np.isfinite(y) & ~np.isin(pids, list(held))
        train = ((part == "train") & np.isfinite(y)) | fused
        val, test = part == "val", part == "test"
        model, _ = fit_head(vectors[train], y[train], vectors[val], y[val], cfg)
        for name, rows in (("val", val), ("test", test)):
            out.append(pd.DataFrame({schema.IMAGE: image[rows], schema.PATIENT_ID: pids[rows], "fold": fold,
                                     SPLIT: name, Y: y[rows], PROB: predict_head(model, vectors[rows])}))
    return pd.concat(out, ignore_index=True)
