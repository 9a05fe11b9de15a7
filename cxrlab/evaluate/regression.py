"""Continuous scores (e.g. Cohen geographic extent 0-8, opacity 0-6): MAE, RMSE, R^2, Pearson, Spearman,
Bland-Altman bias and 95 % limits of agreement (difference = prediction - truth)."""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from cxrlab.evaluate._checks import as_1d, same_length
from cxrlab.evaluate.bootstrap import DEFAULT_N_BOOT, bootstrap


def bland_altman(y_true, y_pred) -> dict[str, float]:
    """Bias (mean of pred - true) and limits bias +- 1.96 SD (sample SD, ddof=1)."""
    y, yp = as_1d("y_true", y_true), as_1d("y_pred", y_pred)
    same_length(y_true=y, y_pred=yp)
    d = yp - y
    sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
    bias = float(d.mean())
    return {"bias": bias, "sd": sd, "loa_low": bias - 1.96 * sd, "loa_high": bias + 1.96 * sd}


def regression_scores(y_true, y_pred) -> dict[str, float]:
    y, yp = as_1d("y_true", y_true), as_1d("y_pred", y_pred)
    same_length(y_true=y, y_pred=yp)
    varies = np.ptp(y) > 0 and np.ptp(yp) > 0  # correlations are undefined for a constant series
    out = {
        "mae": float(mean_absolute_error(y, yp)),
        "rmse": float(np.sqrt(mean_squared_error(y, yp))),
        "r2": float(r2_score(y, yp)) if np.ptp(y) > 0 else float("nan"),
        "pearson": float(stats.pearsonr(y, yp)[0]) if varies and len(y) > 1 else float("nan"),
        "spearman": float(stats.spearmanr(y, yp)[0]) if varies and len(y) > 1 else float("nan"),
    }
    out.update({f"bland_altman.{k}": v for k, v in bland_altman(y, yp).items()})
    return out


def regression_metrics(y_true, y_pred, *, patient_ids=None, n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> dict:
    y, yp = as_1d("y_true", y_true), as_1d("y_pred", y_pred)
    n = same_length(y_true=y, y_pred=yp)
    est = bootstrap(lambda idx: regression_scores(y[idx], yp[idx]), n,
                    None if patient_ids is None else np.asarray(patient_ids), n_boot=n_boot, seed=seed)
    return {"n": n, "metrics": {k: e.as_dict() for k, e in est.items()}}
