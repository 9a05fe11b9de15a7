"""Out-of-fold probabilities for training a combiner, refusing any a model produced for a patient it trained on.

One patient-level K-fold assignment (``image, patient_id, fold``, e.g. from
:func:`cxrlab.data.splits.kfold_patients`) is shared by every base learner. The model of fold k is trained
on the patients of the other folds (``train_folds``, by default every fold but k) and predicts the patients
of fold k. A combiner trained on probabilities a model made for its own training patients learns how
confident an overfitted learner is on data it memorised, not how it behaves on new patients, so
:func:`assemble_oof` raises :class:`LeakageError` for such a probability instead of using it. It also
refuses gaps (an image without a probability from some learner) and duplicates.

>>> preds = [FoldPredictions("densenet", fold=k, images=imgs_k, probs=p_k) for k, (imgs_k, p_k) in ...]
>>> oof = assemble_oof(assignment, preds)           # oof.probs: (N, L, C) in the assignment's row order
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.data.splits import FOLD, assert_patient_disjoint
from cxrlab.errors import InputError

SOURCE = "out-of-fold predictions"


class LeakageError(InputError):
    """A probability for a patient made by a model whose training folds contained that patient."""


@dataclass(frozen=True)
class FoldPredictions:
    """One base learner's model for one fold and the probabilities it produced.

    ``fold`` is the fold the model was held out from; ``train_folds`` the folds whose patients it trained
    on (None: every other fold of the assignment)."""

    learner: str
    fold: int
    images: Sequence[str]
    probs: np.ndarray
    train_folds: frozenset[int] | None = None


@dataclass
class OutOfFold:
    """Assembled out-of-fold probabilities, row i of every array is image ``images[i]``."""

    probs: np.ndarray          # (N, L, C)
    learners: list[str]
    images: np.ndarray         # (N,) str
    patients: np.ndarray       # (N,) str
    folds: np.ndarray          # (N,) int: the patient's fold


def _check_assignment(assignment: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in (schema.IMAGE, schema.PATIENT_ID, FOLD) if c not in assignment.columns]
    if missing:
        raise InputError("fold assignment", f"missing column(s): {', '.join(missing)}")
    df = assignment[[schema.IMAGE, schema.PATIENT_ID, FOLD]].astype({schema.IMAGE: str, schema.PATIENT_ID: str})
    if df[FOLD].isna().any():
        raise InputError("fold assignment", "every image needs a fold", field=FOLD)
    dup = df[schema.IMAGE].duplicated()
    if dup.any():
        raise InputError("fold assignment", f"image listed twice: {df.loc[dup, schema.IMAGE].iloc[0]}",
                         field=schema.IMAGE)
    assert_patient_disjoint(df, FOLD, source="fold assignment")
    return df.astype({FOLD: int}).reset_index(drop=True)


def _train_folds(pred: FoldPredictions, all_folds: set[int]) -> set[int]:
    folds = set(all_folds) - {pred.fold} if pred.train_folds is None else set(pred.train_folds)
    if pred.fold in folds:
        raise LeakageError(SOURCE, f"learner {pred.learner!r}, fold {pred.fold}: its training folds "
                                   f"{sorted(folds)} include the fold it is said to be held out from")
    return folds


def assemble_oof(assignment: pd.DataFrame, predictions: Iterable[FoldPredictions],
                 learners: Sequence[str] | None = None) -> OutOfFold:
    """``(N, L, C)`` out-of-fold probabilities in ``assignment``'s row order, learners in ``learners`` order
    (default: first appearance). Raises :class:`LeakageError` for a probability whose patient was in the
    producing model's training folds, and ``InputError`` for unknown images, duplicates, gaps, or class
    counts / probability rows that do not add up."""
    df = _check_assignment(assignment)
    row_of = pd.Series(np.arange(len(df)), index=df[schema.IMAGE])
    folds = df[FOLD].to_numpy()
    all_folds = set(folds.tolist())
    predictions = list(predictions)
    if not predictions:
        raise InputError(SOURCE, "no predictions given")
    order = list(learners) if learners is not None else list(dict.fromkeys(p.learner for p in predictions))
    column = {name: i for i, name in enumerate(order)}
    n_classes = {np.asarray(p.probs).shape[-1] for p in predictions}
    if len(n_classes) != 1:
        raise InputError(SOURCE, f"probabilities with different class counts: {sorted(n_classes)}")
    out = np.full((len(df), len(order), n_classes.pop()), np.nan)
    for pred in predictions:
        where = f"learner {pred.learner!r}, model of fold {pred.fold}"
        if pred.learner not in column:
            raise InputError(SOURCE, f"{where}: learner not in {order}")
        probs = np.asarray(pred.probs, dtype=np.float64)
        images = pd.Index([str(i) for i in pred.images])
        if probs.shape != (len(images), out.shape[2]):
            raise InputError(SOURCE, f"{where}: {len(images)} images but probabilities of shape {probs.shape}")
        if not (np.isfinite(probs).all() and (probs >= 0).all() and np.allclose(probs.sum(axis=1), 1, atol=1e-3)):
            raise InputError(SOURCE, f"{where}: rows must be finite class probabilities summing to 1")
        unknown = images[~images.isin(row_of.index)]
        if len(unknown):
            raise InputError(SOURCE, f"{where}: {len(unknown)} image(s) not in the fold assignment, "
                                     f"first: {unknown[0]}")
        rows = row_of.loc[images].to_numpy()
        trained_on = np.isin(folds[rows], sorted(_train_folds(pred, all_folds)))
        if trained_on.any():
            i = rows[np.argmax(trained_on)]
            raise LeakageError(SOURCE, f"{where}: {int(trained_on.sum())} probability(ies) for patients its "
                                       f"training folds contained, first: image {df[schema.IMAGE][i]} of patient "
                                       f"{df[schema.PATIENT_ID][i]} (fold {folds[i]}); a combiner must see only "
                                       "probabilities of patients the model never trained on")
        target = out[rows, column[pred.learner]]
        if images.duplicated().any() or not np.isnan(target).all():
            raise InputError(SOURCE, f"{where}: an image has more than one out-of-fold probability")
        out[rows, column[pred.learner]] = probs
    gaps = np.isnan(out[:, :, 0])
    if gaps.any():
        i, j = np.argwhere(gaps)[0]
        raise InputError(SOURCE, f"{int(gaps.sum())} (image, learner) pair(s) without an out-of-fold probability, "
                                 f"first: image {df[schema.IMAGE][i]} (fold {folds[i]}), learner {order[j]!r}")
    return OutOfFold(out, order, df[schema.IMAGE].to_numpy(), df[schema.PATIENT_ID].to_numpy(), folds)


def fold_predictions_from_table(table: pd.DataFrame, classes: Sequence[str]) -> list[FoldPredictions]:
    """Per-(learner, fold) predictions from a long table with columns ``learner, fold, image,
    prob_<class>...`` (the layout a run's ``predictions`` table gives, plus learner and fold)."""
    columns = [f"prob_{c}" for c in classes]
    missing = [c for c in ["learner", FOLD, schema.IMAGE, *columns] if c not in table.columns]
    if missing:
        raise InputError("prediction table", f"missing column(s): {', '.join(missing)}")
    return [FoldPredictions(str(learner), int(fold), part[schema.IMAGE].astype(str).tolist(),
                            part[columns].to_numpy(dtype=np.float64))
            for (learner, fold), part in table.groupby(["learner", FOLD], sort=False)]
