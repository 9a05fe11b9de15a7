"""Training and evaluating the quality gate from manifests: ``cxrlab quality train`` and its benchmark.

Labels come from what the manifests already say: a film is *lateral* when its ``view`` is a lateral code,
*frontal* when it names PA/AP, or when its source has no lateral film at all (a frontal-only collection such as
JSRT or Kermany); other rows of sources with laterals (view missing, '?') are left out of the view model only.
Inversion needs no label: every film is shown as displayed and as its negative.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from cxrlab.data import load_manifest, schema
from cxrlab.data.splits import kfold_patients, split_patients
from cxrlab.errors import InputError
from cxrlab.evaluate.bootstrap import bootstrap
from cxrlab.io import read_image
from cxrlab.quality.config import QualityConfig, load_quality_config
from cxrlab.quality.features import FeatureExtractor, square
from cxrlab.quality.gate import GateModels, QualityGate, fit_gate_models
from cxrlab.quality.nonchest import nonchest_images

LATERAL_CODES = {"L", "LL", "RL", "LAT", "LATERAL", "LLD", "RLD"}
Progress = Callable[[str, int, int, str], None]


def view_labels(df: pd.DataFrame) -> np.ndarray:
    """1 lateral, 0 frontal, -1 unknown (see the module docstring)."""
    view = df[schema.VIEW].fillna("").astype(str).str.strip().str.upper() if schema.VIEW in df.columns \
        else pd.Series("", index=df.index)
    lateral = view.isin(LATERAL_CODES)
    frontal = view.str.contains(r"\b(?:PA|AP)\b", regex=True)
    source = df[schema.SOURCE_DATASET].astype(str) if schema.SOURCE_DATASET in df.columns \
        else pd.Series("", index=df.index)
    frontal_only_sources = set(source[~source.isin(set(source[lateral]))])
    out = np.full(len(df), -1, np.int64)
    out[(frontal | source.isin(frontal_only_sources)).to_numpy()] = 0
    out[lateral.to_numpy()] = 1
    return out


@dataclass
class FeatureTable:
    """Features of every readable film, as displayed and inverted, with the rows they came from."""

    rows: pd.DataFrame               # manifest rows (image, patient_id, source_dataset, view)
    features: np.ndarray
    inverted: np.ndarray
    lateral: np.ndarray
    skipped: list[str]               # "path: reason" of films that could not be read


def load_training_rows(manifests: Sequence[str | os.PathLike], config: QualityConfig) -> pd.DataFrame:
    if not manifests:
        raise InputError("quality train", "no --data manifest given")
    frames = [load_manifest(m).df for m in manifests]
    df = pd.concat(frames, ignore_index=True).drop_duplicates(schema.IMAGE).reset_index(drop=True)
    if config.max_images_per_source:  # keep whole patients, drawn at random, until the source's budget is met
        keep = []
        rng = np.random.default_rng(config.seed)
        for _, part in df.groupby(schema.SOURCE_DATASET, sort=True):
            patients = part[schema.PATIENT_ID].unique()
            order = patients[rng.permutation(len(patients))]
            counts = part.groupby(schema.PATIENT_ID).size().reindex(order).cumsum()
            chosen = set(counts.index[counts <= config.max_images_per_source]) or {order[0]}
            keep.append(part[part[schema.PATIENT_ID].isin(chosen)])
        df = pd.concat(keep).sort_index().reset_index(drop=True)
    return df


def compute_features(df: pd.DataFrame, extractor: FeatureExtractor, progress: Progress | None = None
                     ) -> FeatureTable:
    images, kept, skipped = [], [], []
    for i, path in enumerate(df[schema.IMAGE]):
        try:
            images.append(square(read_image(path)[0], extractor.size))  # the extractor's size: 5 k films fit
            kept.append(i)
        except InputError as exc:
            skipped.append(str(exc))
        if progress:
            progress("read images", i + 1, len(df), f"{len(skipped)} unreadable")
    rows = df.iloc[kept].reset_index(drop=True)
    done = [0]

    def step(label: str) -> Callable[[int], None]:
        def on_batch(n: int) -> None:
            done[0] += n
            if progress:
                progress(label, done[0], 2 * len(images), "")
        return on_batch

    feats = extractor(images, step("features"))
    inverted = extractor(images, step("features"), invert=True)
    return FeatureTable(rows, feats, inverted, view_labels(rows), skipped)


def _counts(rows: pd.DataFrame, lateral: np.ndarray) -> dict[str, Any]:
    return {"images": int(len(rows)), "patients": int(rows[schema.PATIENT_ID].nunique()),
            "lateral": int((lateral == 1).sum()), "frontal": int((lateral == 0).sum()),
            "view_unknown": int((lateral == -1).sum()),
            "by_source": {str(k): int(v) for k, v in rows[schema.SOURCE_DATASET].value_counts().sort_index().items()}}


def _estimates(stat: Callable[[np.ndarray], dict[str, float]], n: int, groups: np.ndarray, n_boot: int,
               seed: int) -> dict[str, dict[str, float]]:
    return {k: e.as_dict() for k, e in bootstrap(stat, n, groups, n_boot=n_boot, seed=seed).items()}


def score_predictions(lateral: np.ndarray, view_prob: np.ndarray, inv_prob_shown: np.ndarray,
                      inv_prob_negative: np.ndarray, ood_chest: np.ndarray, ood_other: np.ndarray,
                      groups: np.ndarray, config: QualityConfig, models_thresholds: tuple[float, float],
                      n_boot: int = 1000) -> dict[str, Any]:
    """Held-out metrics with patient-level bootstrap 95 % CIs (each film once as displayed, once inverted)."""
    warn, refuse = models_thresholds
    known = lateral >= 0
    y, p = lateral[known], view_prob[known] > config.view_threshold
    g = groups[known]

    def view_stat(idx: np.ndarray) -> dict[str, float]:
        yy, pp = y[idx], p[idx]
        lat, fro = yy == 1, yy == 0
        return {"accuracy": float((yy == pp).mean()),
                "lateral_recall": float(pp[lat].mean()) if lat.any() else float("nan"),
                "frontal_specificity": float((~pp[fro]).mean()) if fro.any() else float("nan"),
                "balanced_accuracy": float(np.nanmean([pp[lat].mean() if lat.any() else np.nan,
                                                       (~pp[fro]).mean() if fro.any() else np.nan]))}

    shown_ok = inv_prob_shown <= config.inversion_threshold
    negative_caught = inv_prob_negative > config.inversion_threshold

    def inversion_stat(idx: np.ndarray) -> dict[str, float]:
        return {"accuracy": float(np.r_[shown_ok[idx], negative_caught[idx]].mean()),
                "inverted_recall": float(negative_caught[idx].mean()),
                "displayed_specificity": float(shown_ok[idx].mean())}

    chest_refused = ood_chest > refuse
    out = {
        "view": _estimates(view_stat, int(known.sum()), g, n_boot, config.seed),
        "inversion": _estimates(inversion_stat, len(groups), groups, n_boot, config.seed),
        "ood": {
            "auroc_chest_vs_nonchest": float(roc_auc_score(np.r_[np.zeros(len(ood_chest)), np.ones(len(ood_other))],
                                                           np.r_[ood_chest, ood_other])) if len(ood_other) else None,
            "nonchest_refused": float((ood_other > refuse).mean()) if len(ood_other) else None,
            "nonchest_warned_or_refused": float((ood_other > warn).mean()) if len(ood_other) else None,
            **{f"chest_{k}": v for k, v in _estimates(
                lambda idx: {"refused": float(chest_refused[idx].mean()),
                             "warned_or_refused": float((ood_chest[idx] > warn).mean())},
                len(groups), groups, n_boot, config.seed).items()},
            "n_nonchest": int(len(ood_other)),
        },
        "n_view_films": int(known.sum()), "n_lateral": int((y == 1).sum()), "n_films": int(len(groups)),
        "n_patients": int(len(np.unique(groups))),
    }
    return out


def _predict(models: GateModels, config: QualityConfig, table: FeatureTable, rows: np.ndarray,
             other_feats: np.ndarray) -> dict[str, np.ndarray]:
    f = table.features[rows]
    return {
        "view_prob": models.view.predict_proba(f)[:, 1] if models.view is not None else np.zeros(len(rows)),
        "inv_shown": models.inversion.predict_proba(f)[:, 1],
        "inv_negative": models.inversion.predict_proba(table.inverted[rows])[:, 1],
        "ood_chest": models.ood.score(f),
        "ood_other": models.ood.score(other_feats) if len(other_feats) else np.zeros(0),
    }


def _with_lateral_patients(table: FeatureTable, rows: np.ndarray) -> pd.DataFrame:
    """``rows`` of the table with ``_has_lateral``: whether the row's patient has any lateral film (a stratum)."""
    sub = table.rows.iloc[rows].assign(_lateral=table.lateral[rows] == 1)
    sub["_has_lateral"] = sub.groupby(schema.PATIENT_ID)["_lateral"].transform("max").astype(str)
    return sub


def _holdout(table: FeatureTable, rows: np.ndarray, config: QualityConfig) -> np.ndarray:
    """'train'/'test' per row of ``rows`` by patient, patients with a lateral film spread over both parts."""
    return split_patients(_with_lateral_patients(table, rows), (1 - config.val_fraction, config.val_fraction),
                          seed=config.seed, stratify="_has_lateral").to_numpy()


def _fit_split(table: FeatureTable, config: QualityConfig, train_mask: np.ndarray) -> GateModels:
    """Fit on ``train_mask`` rows; a patient-level part of them sets the OOD thresholds."""
    idx = np.flatnonzero(train_mask)
    part = _holdout(table, idx, config)
    return fit_gate_models(config, table.features, table.inverted, table.lateral,
                           idx[part == "train"], idx[part == "test"])


def cross_validate(table: FeatureTable, config: QualityConfig, other_feats: np.ndarray, k: int = 5,
                   n_boot: int = 1000) -> dict[str, Any]:
    """Out-of-fold predictions for every film (k patient-level folds, stratified by whether a patient has a
    lateral film), then scored once."""
    strat = _with_lateral_patients(table, np.arange(len(table.rows)))
    folds = kfold_patients(strat, k=k, seed=config.seed, stratify="_has_lateral").to_numpy()
    preds = {key: np.zeros(len(table.rows)) for key in ("view_prob", "inv_shown", "inv_negative", "ood_chest")}
    other = np.zeros((k, len(other_feats)))
    thresholds = np.zeros((len(table.rows), 2))
    fold_models = []
    for fold in range(k):
        test = folds == fold
        models = _fit_split(table, config, ~test)
        fold_models.append(models)
        pred = _predict(models, config, table, np.flatnonzero(test), other_feats)
        for key in preds:
            preds[key][test] = pred[key]
        other[fold] = pred["ood_other"]
        thresholds[test] = (models.ood_warn, models.ood_refuse)
    groups = table.rows[schema.PATIENT_ID].astype(str).to_numpy()
    # each film is judged against its own fold's thresholds: express distances relative to them
    rel_chest = preds["ood_chest"] / thresholds[:, 1]
    rel_other = (other / np.array([thresholds[folds == f][0, 1] for f in range(k)])[:, None]).ravel()
    result = score_predictions(table.lateral, preds["view_prob"], preds["inv_shown"], preds["inv_negative"],
                               rel_chest, rel_other, groups, config,
                               (float(np.median(thresholds[:, 0] / thresholds[:, 1])), 1.0), n_boot)
    result["folds"] = k
    result["n_nonchest_pictures"] = int(len(other_feats))
    result["fold_of_row"] = folds
    result["fold_models"] = fold_models  # each fold's fitted gate, to replay its films through other code paths
    result["per_source"] = {
        str(src): {"images": int(m.sum()),
                   "view_accuracy": float(((preds["view_prob"][m & (table.lateral >= 0)] > config.view_threshold)
                                           == (table.lateral[m & (table.lateral >= 0)] == 1)).mean())
                   if (m & (table.lateral >= 0)).any() else None,
                   "inversion_accuracy": float(np.r_[preds["inv_shown"][m] <= config.inversion_threshold,
                                                     preds["inv_negative"][m] > config.inversion_threshold].mean()),
                   "chest_refused": float((rel_chest[m] > 1.0).mean())}
        for src in sorted(table.rows[schema.SOURCE_DATASET].astype(str).unique())
        for m in [table.rows[schema.SOURCE_DATASET].astype(str).to_numpy() == src]}
    result["oof"] = pd.DataFrame({"image": table.rows[schema.IMAGE].astype(str), "patient_id": groups,
                                  "source": table.rows[schema.SOURCE_DATASET].astype(str),
                                  "lateral": table.lateral, **preds, "ood_relative": rel_chest})
    return result


def train_quality_gate(manifests: Sequence[str | os.PathLike], out: str | os.PathLike,
                       config: QualityConfig | str | Path | dict | None = None, overrides: list[str] | None = None,
                       progress: Progress | None = None, n_boot: int = 500) -> Path:
    """Fit the gate on the manifests' films; writes ``out/gate.joblib`` + ``out/quality.json`` and returns ``out``.

    A patient-level part (``val_fraction``) is held out: it sets the OOD thresholds and gives the metrics
    recorded in ``quality.json`` (with patient-level bootstrap CIs).
    """
    config = load_quality_config(config, overrides)
    t0 = time.perf_counter()
    out = Path(out)
    df = load_training_rows(manifests, config)
    extractor = FeatureExtractor(config.backbone, config.weights, config.size, config.batch_size)
    table = compute_features(df, extractor, progress)
    if len(table.rows) < 4:
        raise InputError("quality train", f"only {len(table.rows)} readable film(s); the gate needs at least 4")
    other_named = nonchest_images(seed=config.seed)
    other_feats = extractor([im for _, im in other_named])
    part = _holdout(table, np.arange(len(table.rows)), config)
    fit_rows, val_rows = np.flatnonzero(part == "train"), np.flatnonzero(part == "test")
    held = fit_gate_models(config, table.features, table.inverted, table.lateral, fit_rows, val_rows)
    pred = _predict(held, config, table, val_rows, other_feats)
    groups = table.rows[schema.PATIENT_ID].astype(str).to_numpy()[val_rows]
    metrics = score_predictions(table.lateral[val_rows], pred["view_prob"], pred["inv_shown"],
                                pred["inv_negative"], pred["ood_chest"], pred["ood_other"], groups, config,
                                (held.ood_warn, held.ood_refuse), n_boot)
    # the shipped gate is the one measured: refitting on every film would leave no unseen films to set the
    # OOD thresholds on (distances of fitted films are biased low)
    models = held
    meta = {
        "trained_on": {"manifests": [str(Path(m).resolve()) for m in manifests], **_counts(table.rows, table.lateral),
                       "unreadable": table.skipped[:50], "n_unreadable": len(table.skipped),
                       "patients": sorted(table.rows[schema.PATIENT_ID].astype(str).unique().tolist())},
        "validation": {"note": "held-out patients (val_fraction); OOD thresholds are set on them too",
                       **metrics},
        "thresholds": {"ood_warn": models.ood_warn, "ood_refuse": models.ood_refuse},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    QualityGate(config, models, extractor).save(out, meta)
    return out
