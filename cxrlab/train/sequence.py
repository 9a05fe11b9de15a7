"""The ``sequence`` input mode: a patient's films (grouped by ``patient_id``, ordered by ``offset_days``) as one
sample, each film a frozen cached feature vector (an EMB file of ``cxrlab embed``), an outcome per patient.

>>> seqs = build_sequences(read_embeddings("emb.parquet"), SequenceConfig.model_validate(recipe))
>>> cv = cross_validate_sequences(seqs, config)     # out-of-fold predictions for lstm / last / mean, with CIs
>>> model = fit_sequence_model(seqs, config, mode="lstm"); predict_sequences(model, seqs, config)

Outcomes: ``binary`` (a 0/1 column, or a text column mapped by ``positive``) trained with BCE and scored by AUC;
``survival`` (``time_column`` days from the first film, ``event_column`` 1 = event) with a Cox head (negative
partial log-likelihood, Breslow ties) scored by Harrell's C-index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import expit

from cxrlab.data import schema
from cxrlab.errors import ConfigError, InputError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeatureSpec(_Strict):
    source: str = Field("efficientnet_lite0", description="run directory or backbone name given to `cxrlab embed`")
    finetune: bool = Field(False, description="train the film CNN's last `train_blocks` stages inside the "
                                              "sequence model (films read from the embeddings' image_path); "
                                              "false: the embeddings' frozen vectors")
    train_blocks: int = Field(1, ge=1, description="finetune: how many of the CNN's last stages are trained")
    lr: float = Field(1e-4, gt=0, description="finetune: learning rate of the CNN's trained stages")


class OutcomeSpec(_Strict):
    kind: Literal["binary", "survival"] = "binary"
    column: str = Field(schema.DEATH_EVENT, description="binary: the 0/1 (or mapped) outcome column")
    positive: list[str] | None = Field(None, description="binary text column: the values meaning 1 (e.g. [N] "
                                                          "for survival=N, died)")
    negative: list[str] | None = Field(None, description="with `positive`: the values meaning 0 (others, e.g. "
                                                          "'?', are unknown); default: every other value")
    time_column: str = schema.SURVIVAL_DAYS
    event_column: str = schema.DEATH_EVENT


class SequenceModelSpec(_Strict):
    hidden: int = Field(64, ge=1)
    proj: int = Field(128, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    time_inputs: bool = True


class SequenceTrainSpec(_Strict):
    epochs: int = Field(60, ge=1)
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(16, ge=2)
    folds: int = Field(5, ge=2)


class SequenceConfig(_Strict):
    name: str = "sequence"
    description: str = ""
    reference: str = ""
    seed: int = 0
    features: FeatureSpec = FeatureSpec()
    outcome: OutcomeSpec = OutcomeSpec()
    model: SequenceModelSpec = SequenceModelSpec()
    train: SequenceTrainSpec = SequenceTrainSpec()
    baselines: list[Literal["last", "mean"]] = ["last", "mean"]


@dataclass
class PatientSequence:
    patient_id: str
    features: np.ndarray   # (T, F) in offset order
    offsets: np.ndarray    # (T,) days
    images: list[str]
    label: float = float("nan")  # binary outcome
    time: float = float("nan")   # survival time (days from the first film)
    event: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)  # absolute image paths (what a fine-tuned CNN reads)

    def prefix(self, n: int) -> "PatientSequence":
        """The course up to and including film ``n`` (what was known then)."""
        return PatientSequence(self.patient_id, self.features[:n], self.offsets[:n], self.images[:n], self.label,
                               self.time, self.event, self.extra, self.paths[:n])


def _binary(values: pd.Series, spec: OutcomeSpec, source: str) -> np.ndarray:
    if spec.positive is not None:
        text = values.astype(str)
        out = np.array(text.isin([str(p) for p in spec.positive]), dtype=float)
        if spec.negative is not None:
            out[~(text.isin([str(n) for n in spec.negative]) | (out == 1)).to_numpy()] = np.nan
        out[values.isna().to_numpy()] = np.nan
        return out
    numbers = pd.to_numeric(values, errors="coerce")
    bad = values.notna() & ~numbers.isin([0, 1])
    if bad.any():
        raise InputError(source, f"binary outcome must be 0/1 (or name `positive` values); found "
                                 f"{values[bad].iloc[0]!r}", field=spec.column)
    return np.array(numbers, dtype=float)


def build_sequences(emb: Any, config: SequenceConfig, source: str = "embeddings") -> list[PatientSequence]:
    """One :class:`PatientSequence` per patient with a known outcome (films without ``offset_days`` dropped)."""
    meta, vectors = emb.meta.reset_index(drop=True), emb.vectors
    spec = config.outcome
    needed = [schema.PATIENT_ID, schema.OFFSET_DAYS] + ([spec.column] if spec.kind == "binary"
                                                        else [spec.time_column, spec.event_column])
    missing = [c for c in needed if c not in meta.columns]
    if missing:
        raise InputError(source, f"needs column(s) {', '.join(missing)} in the embeddings' metadata (embed a "
                                 "manifest that has them)", field=missing[0])
    offsets = pd.to_numeric(meta[schema.OFFSET_DAYS], errors="coerce").to_numpy(float)
    if spec.kind == "binary":
        label = _binary(meta[spec.column], spec, source)
        time = event = np.full(len(meta), np.nan)
    else:
        label = np.full(len(meta), np.nan)
        time = pd.to_numeric(meta[spec.time_column], errors="coerce").to_numpy(float)
        event = pd.to_numeric(meta[spec.event_column], errors="coerce").to_numpy(float)
    paths = meta.get("image_path", meta[schema.IMAGE]).astype(str).to_numpy()
    seqs = []
    for pid, rows in meta.groupby(schema.PATIENT_ID, sort=True).indices.items():
        rows = rows[np.isfinite(offsets[rows])]
        if len(rows) == 0:
            continue
        rows = rows[np.lexsort((meta[schema.IMAGE].to_numpy()[rows].astype(str), offsets[rows]))]
        if spec.kind == "binary":
            y = label[rows]
            if not np.isfinite(y).any():
                continue
            seq = PatientSequence(str(pid), vectors[rows], offsets[rows], list(meta[schema.IMAGE].to_numpy()[rows]),
                                  label=float(np.nanmax(y)), paths=list(paths[rows]))
        else:
            t, e = time[rows], event[rows]
            if not (np.isfinite(t).any() and np.isfinite(e).any()):
                continue
            seq = PatientSequence(str(pid), vectors[rows], offsets[rows], list(meta[schema.IMAGE].to_numpy()[rows]),
                                  time=float(np.nanmax(t)) - float(offsets[rows][0]), event=int(np.nanmax(e)),
                                  paths=list(paths[rows]))
        seqs.append(seq)
    if not seqs:
        raise InputError(source, "no patient with both films and a recorded outcome")
    return seqs


def collate(seqs: Sequence[PatientSequence]) -> dict[str, torch.Tensor]:
    """Padded batch: ``features`` (B, T, F), ``gaps`` (B, T, 2), ``lengths`` (B,), outcomes."""
    n, t_max, f = len(seqs), max(len(s.offsets) for s in seqs), seqs[0].features.shape[1]
    feats = np.zeros((n, t_max, f), np.float32)
    gaps = np.zeros((n, t_max, 2), np.float32)
    for i, s in enumerate(seqs):
        t = len(s.offsets)
        feats[i, :t] = s.features
        since_prev = np.diff(s.offsets, prepend=s.offsets[0])
        gaps[i, :t, 0] = np.log1p(np.maximum(since_prev, 0))
        gaps[i, :t, 1] = np.log1p(np.maximum(s.offsets - s.offsets[0], 0))
    return {"features": torch.from_numpy(feats), "gaps": torch.from_numpy(gaps),
            "lengths": torch.tensor([len(s.offsets) for s in seqs]),
            "label": torch.tensor([s.label for s in seqs], dtype=torch.float32),
            "time": torch.tensor([s.time for s in seqs], dtype=torch.float32),
            "event": torch.tensor([s.event for s in seqs], dtype=torch.float32)}


def cox_loss(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood (Breslow ties), mean over events; 0 when the batch has no event."""
    order = torch.argsort(time, descending=True)
    r, t, e = risk[order], time[order], event[order]
    log_cum = torch.logcumsumexp(r, dim=0)
    # risk set of i = every j with t_j >= t_i: in descending order, up to the last index tied with t_i
    last = torch.searchsorted(-t.contiguous(), -t.contiguous(), right=True) - 1
    if e.sum() == 0:
        return risk.sum() * 0.0
    return -((r - log_cum[last]) * e).sum() / e.sum()


def _loss(out: torch.Tensor, batch: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    if kind == "binary":
        return torch.nn.functional.binary_cross_entropy_with_logits(out, batch["label"])
    return cox_loss(out, batch["time"], batch["event"])


def _forward(model: torch.nn.Module, seqs: Sequence[PatientSequence], batch: dict[str, torch.Tensor],
             per_step: bool = False) -> torch.Tensor:
    """The model's output for a collated batch: from the cached vectors, or through the fine-tuned film CNN."""
    from cxrlab.train.sequence_films import FilmSequenceModel

    if isinstance(model, FilmSequenceModel):
        net, features = model.head, model.padded_features(seqs, batch["lengths"])
    else:
        net, features = model, batch["features"]
    return (net.per_step if per_step else net)(features, batch["gaps"], batch["lengths"])


def _needs_films(config: SequenceConfig, films: Any) -> None:
    if config.features.finetune and films is None:
        raise ConfigError("features.finetune: the film CNN is needed (pass films=film_store_for(emb.info, "
                          "train_blocks); `cxrlab sequence cv` does this from the embeddings file)")


def fit_sequence_model(seqs: Sequence[PatientSequence], config: SequenceConfig, mode: str = "lstm",
                       seed: int | None = None, films: Any = None) -> torch.nn.Module:
    """Train one model (``lstm``, or a baseline ``last`` / ``mean``) on ``seqs``; Adam, full epochs, no early stop.

    With ``features.finetune`` (``films``: a :class:`~cxrlab.train.sequence_films.FilmStore`) each model gets its
    own copy of the film CNN with the last ``train_blocks`` stages trained at ``features.lr``."""
    from cxrlab.models.sequence import create_sequence_model, set_scaling

    if len(seqs) < 2:
        raise InputError("sequence training", f"needs at least 2 patients (got {len(seqs)})")
    _needs_films(config, films)
    torch.manual_seed(config.seed if seed is None else seed)
    m = config.model
    groups = []
    if config.features.finetune:
        from cxrlab.train.sequence_films import FilmSequenceModel, trainable_copy

        cnn, cnn_params = trainable_copy(films.cnn, films.frozen)
        head = create_sequence_model(mode, int(cnn.body.num_features), hidden=m.hidden, proj=m.proj,
                                     dropout=m.dropout, time_inputs=m.time_inputs)
        model = FilmSequenceModel(cnn, head, films)
        with torch.no_grad():
            set_scaling(head, model.features([p for s in seqs for p in s.paths]))
        groups.append({"params": cnn_params, "lr": config.features.lr})
    else:
        model = head = create_sequence_model(mode, seqs[0].features.shape[1], hidden=m.hidden, proj=m.proj,
                                             dropout=m.dropout, time_inputs=m.time_inputs)
        set_scaling(model, torch.from_numpy(np.concatenate([s.features for s in seqs]).astype(np.float32)))
    groups.insert(0, {"params": list(head.parameters()), "lr": config.train.lr})
    opt = torch.optim.Adam(groups, lr=config.train.lr, weight_decay=config.train.weight_decay)
    rng = np.random.default_rng(config.seed if seed is None else seed)
    bs = config.train.batch_size
    model.train()
    for _ in range(config.train.epochs):
        order = rng.permutation(len(seqs))
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            if len(idx) < 2:
                continue
            chosen = [seqs[i] for i in idx]
            batch = collate(chosen)
            loss = _loss(_forward(model, chosen, batch), batch, config.outcome.kind)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return model


@torch.no_grad()
def predict_sequences(model: torch.nn.Module, seqs: Sequence[PatientSequence], config: SequenceConfig,
                      per_step: bool = False) -> np.ndarray | list[np.ndarray]:
    """Per patient: the probability (binary) or log-risk (survival) after the last film; with ``per_step``,
    one array per patient of the output after each of its films (each uses only the films up to it)."""
    model.eval()
    batch = collate(seqs)
    if per_step:
        steps = _forward(model, seqs, batch, per_step=True).numpy()
        out = [steps[i, :len(s.offsets)] for i, s in enumerate(seqs)]
        return [expit(o) for o in out] if config.outcome.kind == "binary" else out
    raw = _forward(model, seqs, batch).numpy()
    return expit(raw) if config.outcome.kind == "binary" else raw


def _folds(seqs: Sequence[PatientSequence], config: SequenceConfig) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold

    y = np.array([s.label if config.outcome.kind == "binary" else s.event for s in seqs]).astype(int)
    k = config.train.folds
    if np.bincount(y, minlength=2).min() < k:
        raise InputError("sequence cross-validation", f"{k} folds need at least {k} patients of each outcome "
                                                      f"(have {np.bincount(y, minlength=2).tolist()})")
    fold = np.zeros(len(seqs), int)
    for i, (_, test) in enumerate(StratifiedKFold(k, shuffle=True, random_state=config.seed).split(y, y)):
        fold[test] = i
    return fold


def cross_validate_sequences(seqs: Sequence[PatientSequence], config: SequenceConfig,
                             modes: Sequence[str] | None = None, n_boot: int = 1000, films: Any = None,
                             progress: Any = None) -> dict[str, Any]:
    """Patient-level stratified k-fold CV of the LSTM and the baselines on the same folds: pooled out-of-fold
    predictions (``predictions``: one row per patient) and metrics with patient bootstrap CIs (AUC for binary,
    C-index for survival), plus the paired difference LSTM − each baseline. ``films``: the film store when
    ``features.finetune`` (every fold and model fine-tunes its own copy of the CNN). ``progress(fold, mode)``
    is called after each model."""
    from cxrlab.evaluate.binary import roc_auc
    from cxrlab.evaluate.bootstrap import bootstrap
    from cxrlab.evaluate.survival import concordance_index

    modes = list(modes or ["lstm", *config.baselines])
    _needs_films(config, films)
    fold = _folds(seqs, config)
    preds = {m: np.zeros(len(seqs)) for m in modes}
    for f in range(config.train.folds):
        train = [s for s, g in zip(seqs, fold) if g != f]
        test_idx = np.flatnonzero(fold == f)
        for mode in modes:
            model = fit_sequence_model(train, config, mode, films=films)
            preds[mode][test_idx] = predict_sequences(model, [seqs[i] for i in test_idx], config)
            if progress:
                progress(f, mode)
    kind = config.outcome.kind
    label = np.array([s.label for s in seqs])
    time = np.array([s.time for s in seqs])
    event = np.array([s.event for s in seqs])

    def metric(p: np.ndarray, idx: np.ndarray) -> float:
        if kind == "binary":
            y = label[idx]
            return float(roc_auc(y, p[idx])) if 0 < y.sum() < len(y) else float("nan")
        return concordance_index(time[idx], event[idx], p[idx])

    def statistic(idx: np.ndarray) -> dict[str, float]:
        values = {m: metric(preds[m], idx) for m in modes}
        values.update({f"lstm-{m}": values["lstm"] - values[m] for m in modes if m != "lstm" and "lstm" in values})
        return values

    name = "auc" if kind == "binary" else "c_index"
    est = bootstrap(statistic, len(seqs), np.array([s.patient_id for s in seqs]), n_boot=n_boot, seed=config.seed)
    table = pd.DataFrame({"patient_id": [s.patient_id for s in seqs], "fold": fold,
                          "n_films": [len(s.offsets) for s in seqs],
                          **({"label": label} if kind == "binary" else {"time": time, "event": event}),
                          **{f"pred_{m}": preds[m] for m in modes}})
    return {"metric": name, "estimates": {k: v.as_dict() for k, v in est.items()}, "predictions": table,
            "n_patients": len(seqs), "n_positive": int(label.sum() if kind == "binary" else event.sum())}


def load_sequence_config(recipe: str | dict, overrides: Sequence[str] = ()) -> SequenceConfig:
    """A ``kind: sequence`` recipe (name, path or dict) as a :class:`SequenceConfig`."""
    from cxrlab.recipes import load_recipe

    config = load_recipe(recipe, overrides, kind="sequence")
    if not isinstance(config, SequenceConfig):
        raise ConfigError(f"recipe {recipe} is not a sequence recipe")
    return config
