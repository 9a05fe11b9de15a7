"""The study table from pooled fold predictions (``image, patient_id, fold, split, y, prob``): AUC with a
patient-level bootstrap CI, sensitivity/specificity at the Youden point chosen on each fold's validation
patients and applied to its test patients, paired comparison with the baseline, and the view confound."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from cxrlab.data import schema
from cxrlab.data.splits import SPLIT
from cxrlab.evaluate.binary import roc_auc
from cxrlab.evaluate.bootstrap import bootstrap_indices
from cxrlab.evaluate.compare import compare_aucs
from cxrlab.evaluate.confound import view_confound
from cxrlab.icu.cv import PROB, Y


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The probability cut maximising sensitivity + specificity − 1 (ties: the highest cut); 0.5 when ``y`` has
    one class only (no ROC curve)."""
    y, p = np.asarray(y, int), np.asarray(p, float)
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, p)
    j = tpr - fpr
    best = int(np.flatnonzero(j == j.max())[0])
    return float(min(thr[best], 1.0))


def sens_spec_at_val_youden(pred: pd.DataFrame) -> dict[str, Any]:
    """Per fold: the Youden cut of its val rows, applied to its test rows; pooled test sensitivity/specificity."""
    calls, truth, cuts = [], [], []
    for _, fold in pred.groupby("fold"):
        val, test = fold[fold[SPLIT] == "val"], fold[fold[SPLIT] == "test"]
        cut = youden_threshold(val[Y].to_numpy(), val[PROB].to_numpy())
        cuts.append(cut)
        calls.append(test[PROB].to_numpy() >= cut)
        truth.append(test[Y].to_numpy().astype(int))
    call, y = np.concatenate(calls), np.concatenate(truth)
    pos, neg = y == 1, y == 0
    return {"sensitivity": float(call[pos].mean()) if pos.any() else math.nan,
            "specificity": float((~call[neg]).mean()) if neg.any() else math.nan, "thresholds": cuts}


def auc_ci(y: np.ndarray, p: np.ndarray, patient_id: np.ndarray, n_boot: int = 2000, seed: int = 0
           ) -> dict[str, float]:
    y, p, pid = np.asarray(y, int), np.asarray(p, float), np.asarray(patient_id).astype(str)
    draws = [roc_auc(y[i], p[i]) for i in bootstrap_indices(pid, n_boot, seed) if len(np.unique(y[i])) == 2]
    low, high = np.percentile(draws, [2.5, 97.5]) if draws else (math.nan, math.nan)
    return {"value": float(roc_auc(y, p)), "low": float(low), "high": float(high)}


def test_rows(pred: pd.DataFrame) -> pd.DataFrame:
    return pred[pred[SPLIT] == "test"].sort_values(schema.IMAGE).reset_index(drop=True)


def arm_summary(pred: pd.DataFrame, views: pd.Series | None = None, n_boot: int = 2000, seed: int = 0
                ) -> dict[str, Any]:
    """AUC (CI), sens/spec at the val Youden point, counts, and (with ``views``: image → view) the confound."""
    test = test_rows(pred)
    if test[schema.IMAGE].duplicated().any():
        raise ValueError("an image is tested in more than one fold")
    out = {"auc": auc_ci(test[Y], test[PROB], test[schema.PATIENT_ID], n_boot, seed),
           **sens_spec_at_val_youden(pred), "images": int(len(test)),
           "patients": int(test[schema.PATIENT_ID].nunique()), "positives": int(test[Y].sum())}
    if views is not None:
        out["confound"] = view_confound(test[Y], test[PROB], test[schema.IMAGE].map(views), test[schema.PATIENT_ID],
                                        n_boot=n_boot, seed=seed)
    return out


def paired_vs(base: pd.DataFrame, arm: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """``arm`` − ``base`` on the same test films: patient-level paired bootstrap and DeLong."""
    a, b = test_rows(base), test_rows(arm)
    if not a[schema.IMAGE].equals(b[schema.IMAGE]):
        raise ValueError("the arms were not tested on the same films (different folds?)")
    return compare_aucs(a[Y], a[PROB], b[PROB], a[schema.PATIENT_ID], n_boot=n_boot, seed=seed)
