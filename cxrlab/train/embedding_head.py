"""A small classifier on frozen film embeddings (the ICU paper's "embedding + data-efficient classifier" arm).

>>> emb = read_embeddings("emb.parquet")                        # cxrlab embed RUN_OR_BACKBONE DATA --out emb.parquet
>>> oof = cross_validate_head(emb.vectors, emb.meta, "went_icu", k=5, seed=0)
>>> oof[["image", "patient_id", "fold", "went_icu", "prob_went_icu"]]

The head is an MLP (one hidden layer by default) with dropout, trained with class weights (positives weighted
by negatives/positives) and early stopping on an unweighted validation loss, the best weights restored. Folds
are by patient over the primary rows; rows marked ``train_only`` (fused data, see cxrlab.data.fusion) only ever
train, and are dropped in the fold that tests their patient, the rule ``cxrlab train`` follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrlab.data import schema
from cxrlab.data.fusion import train_only_rows
from cxrlab.data.splits import kfold_patients, split_patients
from cxrlab.errors import ConfigError, InputError


@dataclass(frozen=True)
class HeadConfig:
    hidden: int = 256  # 0 = logistic regression on the embedding
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 200
    batch_size: int = 64
    patience: int = 20
    class_weight: bool = True
    val_fraction: float = 0.15
    seed: int = 0


def _head(dim: int, cfg: HeadConfig) -> nn.Module:
    if cfg.hidden <= 0:
        return nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(dim, 1))
    return nn.Sequential(nn.Linear(dim, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, 1))


def fit_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
             cfg: HeadConfig = HeadConfig()) -> tuple[nn.Module, dict[str, Any]]:
    """Train the head (binary) on standardised inputs; returns it (best validation loss) and a summary."""
    y_train = np.asarray(y_train, np.float32)
    if len(np.unique(y_train)) != 2:
        raise InputError("embedding head", "the training rows need both classes", field="label")
    torch.manual_seed(cfg.seed)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    model = nn.Sequential(_Standardise(mean, std), _head(x_train.shape[1], cfg))
    pos = float(y_train.sum())
    pos_weight = torch.tensor((len(y_train) - pos) / pos if cfg.class_weight else 1.0)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    val_loss_fn = nn.BCEWithLogitsLoss()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    xt, yt = torch.as_tensor(x_train, dtype=torch.float32), torch.as_tensor(y_train)
    xv, yv = torch.as_tensor(x_val, dtype=torch.float32), torch.as_tensor(np.asarray(y_val, np.float32))
    gen = torch.Generator().manual_seed(cfg.seed)
    best, best_state, bad, epochs = float("inf"), None, 0, 0
    for epoch in range(cfg.epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(cfg.batch_size):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xt[idx]).squeeze(1), yt[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val = float(val_loss_fn(model(xv).squeeze(1), yv)) if len(xv) else float("nan")
        epochs = epoch + 1
        if not len(xv):
            continue
        if val < best - 1e-6:
            best, bad = val, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, {"epochs": epochs, "best_val_loss": best if best_state is not None else None,
                   "pos_weight": float(pos_weight)}


class _Standardise(nn.Module):
    def __init__(self, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@torch.no_grad()
def predict_head(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    return torch.sigmoid(model(torch.as_tensor(x, dtype=torch.float32)).squeeze(1)).numpy()


def cross_validate_head(vectors: np.ndarray, meta: pd.DataFrame, column: str, k: int = 5, seed: int = 0,
                        cfg: HeadConfig | None = None, stratify: bool = True,
                        allow_pretrain_overlap: bool = False) -> pd.DataFrame:
    """Out-of-fold probabilities for the labelled primary rows: one head per patient-level fold.

    Every primary row is tested once, so vectors from a pretrained backbone that saw any of their patients are
    refused (``seen_in_pretraining``, see cxrlab.pretrain.guard) unless ``allow_pretrain_overlap``.

    Returns ``image, patient_id, fold, <column>, prob_<column>`` (one row per tested film); its ``attrs``
    hold per-fold summaries (train/val/test images, train-only rows used and dropped, epochs).
    """
    from cxrlab.pretrain.guard import check_embedding_overlap

    cfg = cfg or HeadConfig(seed=seed)
    if column not in meta.columns:
        raise InputError("embeddings", "label column missing", field=column)
    if len(meta) != len(vectors):
        raise InputError("embeddings", f"{len(vectors)} vectors for {len(meta)} rows")
    y = pd.to_numeric(meta[column], errors="coerce").to_numpy(float)
    bad = np.isfinite(y) & ~np.isin(y, (0.0, 1.0))
    if bad.any():
        raise InputError("embeddings", f"binary label must be 0/1, found {sorted(set(y[bad]))[:5]}", field=column)
    labelled = np.isfinite(y)
    df = meta.reset_index(drop=True).assign(_y=y)[labelled].reset_index(drop=True)
    x = vectors[labelled]
    only = train_only_rows(df)
    primary = df[~only]
    check_embedding_overlap(df, ~only, allow_pretrain_overlap)
    if primary[schema.PATIENT_ID].nunique() < k:
        raise ConfigError(f"k-fold: {primary[schema.PATIENT_ID].nunique()} labelled primary patients for k={k}")
    folds = kfold_patients(primary.assign(_label=primary["_y"].astype(int)), k, seed,
                           "_label" if stratify else None)
    pids = df[schema.PATIENT_ID].astype(str)
    out, summary = [], []
    for fold in range(k):
        test_rows = folds.index[folds == fold]
        test_patients = set(pids[test_rows])
        rest = primary.loc[folds.index[folds != fold]]
        inner = split_patients(rest.assign(_label=rest["_y"].astype(int)), (1 - cfg.val_fraction, cfg.val_fraction),
                               seed, "_label" if stratify else None)
        val_rows = inner.index[inner == "test"]
        val_patients = set(pids[val_rows])
        fused = df.index[only & ~pids.isin(test_patients | val_patients).to_numpy()]
        train_rows = inner.index[inner == "train"].union(fused)
        model, info = fit_head(x[train_rows], df.loc[train_rows, "_y"].to_numpy(), x[val_rows],
                               df.loc[val_rows, "_y"].to_numpy(), cfg)
        prob = predict_head(model, x[test_rows])
        out.append(pd.DataFrame({schema.IMAGE: df.loc[test_rows, schema.IMAGE].to_numpy(),
                                 schema.PATIENT_ID: pids[test_rows].to_numpy(), "fold": fold,
                                 column: df.loc[test_rows, "_y"].to_numpy(), f"prob_{column}": prob}))
        summary.append({"fold": fold, "train": int(len(train_rows)), "val": int(len(val_rows)),
                        "test": int(len(test_rows)), "train_only_used": int(len(fused)),
                        "train_only_dropped": int(only.sum() - len(fused)), **info})
    result = pd.concat(out, ignore_index=True)
    result.attrs["folds"] = summary
    return result
