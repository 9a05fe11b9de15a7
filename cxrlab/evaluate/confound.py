"""The acquisition-view confound of a binary outcome (ICU admission): is the model better than the view alone?

ICU patients are filmed AP / supine at the bedside, others mostly PA in the department, so the view alone
separates them well. ``view_confound`` puts a model's AUC beside the view-only baseline on the *same* films and
patients (AP/supine scored 1, PA 0), the paired difference, and the model's AUC within each view group, each
with a patient-level bootstrap 95 % interval (:func:`cxrlab.evaluate.bootstrap.bootstrap`).

>>> view_confound(y, p, df["view"], df["patient_id"])["view_only_auc"]
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from cxrlab.evaluate.binary import roc_auc
from cxrlab.evaluate.bootstrap import DEFAULT_N_BOOT, bootstrap

BEDSIDE, PA = "ap_supine", "pa"


def view_group(view: Any) -> str | None:
    """``ap_supine`` (AP, AP supine/erect, supine, bedside), ``pa``, or None (lateral, empty, unknown)."""
    if view is None or (isinstance(view, float) and np.isnan(view)):
        return None
    text = str(view).strip().upper().replace("-", " ").replace("_", " ")
    if text in ("PA", "POSTERO ANTERIOR", "POSTEROANTERIOR"):
        return PA
    if text.startswith("AP") or "SUPINE" in text or "BEDSIDE" in text or "PORTABLE" in text \
            or text.startswith("ANTERO"):
        return BEDSIDE
    return None


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    return roc_auc(y, p) if len(np.unique(y)) == 2 else float("nan")


def view_confound(y: Sequence[float], p: Sequence[float], view: Sequence[Any], patient_id: Sequence[Any], *,
                  n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> dict[str, Any]:
    """View-only baseline AUC vs the model's AUC on the same films, and the model's AUC within each view.

    Films with an unknown view or no label/prediction are left out (counted in ``left_out``). Returns plain
    dicts (``{"value", "low", "high", "n_boot"}`` per estimate).
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    groups = np.array([view_group(v) for v in view], dtype=object)
    pid = np.asarray(patient_id).astype(str)
    keep = np.isfinite(y) & np.isfinite(p) & (groups != None)  # noqa: E711 (elementwise on an object array)
    out: dict[str, Any] = {"left_out": int((~keep).sum())}
    y, p, groups, pid = y[keep].astype(int), p[keep], groups[keep], pid[keep]
    bedside = (groups == BEDSIDE).astype(float)
    out["n_images"], out["n_patients"] = int(len(y)), int(len(np.unique(pid)))
    out["views"] = {g: {"images": int((groups == g).sum()), "patients": int(len(np.unique(pid[groups == g]))),
                        "positives": int(y[groups == g].sum())} for g in (BEDSIDE, PA)}
    if not len(y):
        return out

    def overall(idx: np.ndarray) -> dict[str, float]:
        model, views = _auc(y[idx], p[idx]), _auc(y[idx], bedside[idx])
        return {"model_auc": model, "view_only_auc": views, "model_minus_view_auc": model - views}

    for k, est in bootstrap(overall, len(y), pid, n_boot=n_boot, seed=seed).items():
        out[k] = est.as_dict()
    out["within_view"] = {}
    for g in (BEDSIDE, PA):
        rows = np.flatnonzero(groups == g)
        if not len(rows):
            continue
        est = bootstrap(lambda idx, rows=rows: {"auc": _auc(y[rows][idx], p[rows][idx])}, len(rows), pid[rows],
                        n_boot=n_boot, seed=seed)["auc"]
        out["within_view"][g] = est.as_dict()
    return out


def frame_view_confound(df: pd.DataFrame, truth: np.ndarray, predicted: np.ndarray, *, n_boot: int, seed: int,
                        view_column: str = "view") -> dict[str, Any] | None:
    """:func:`view_confound` for an evaluation frame with a ``view`` column (None without one)."""
    if view_column not in df.columns or "patient_id" not in df.columns:
        return None
    if not df[view_column].map(view_group).notna().any():
        return None
    return view_confound(truth, predicted, df[view_column].to_numpy(), df["patient_id"].to_numpy(),
                         n_boot=n_boot, seed=seed)
