"""Time-to-event metrics on numpy arrays, computed by scikit-survival (a maintained survival library).

>>> concordance_index(time, event, risk)     # Harrell's C: share of comparable pairs ordered by risk (ties 1/2)
>>> kaplan_meier(time, event)                # (times, survival probability) step function
>>> time_dependent_auc(time, event, risk, times=[14, 28], train_time=..., train_event=...)

``event`` is 1 for an observed event (death) and 0 for censoring at ``time``; a higher ``risk`` means an earlier
expected event.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cxrlab.errors import InputError


def _arrays(time: Sequence[float], event: Sequence[int], risk: Sequence[float] | None = None):
    t = np.asarray(time, float)
    e = np.asarray(event).astype(bool)
    if len(t) != len(e) or (risk is not None and len(np.asarray(risk)) != len(t)):
        raise InputError("survival", f"time, event (and risk) differ in length: {len(t)}, {len(e)}")
    if not np.isfinite(t).all():
        raise InputError("survival", "time has missing or infinite values", field="survival_days")
    return t, e


def concordance_index(time: Sequence[float], event: Sequence[int], risk: Sequence[float]) -> float:
    """Harrell's C-index; NaN when no pair is comparable (no event, or a single patient)."""
    from sksurv.metrics import concordance_index_censored

    t, e = _arrays(time, event, risk)
    if e.sum() == 0 or len(t) < 2:
        return float("nan")
    try:
        return float(concordance_index_censored(e, t, np.asarray(risk, float))[0])
    except ValueError:  # no comparable pair (e.g. every event at the last time)
        return float("nan")


def kaplan_meier(time: Sequence[float], event: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan–Meier estimate: event/censoring times and the survival probability just after each."""
    from sksurv.nonparametric import kaplan_meier_estimator

    t, e = _arrays(time, event)
    x, y = kaplan_meier_estimator(e, t)
    return np.asarray(x, float), np.asarray(y, float)


def time_dependent_auc(time: Sequence[float], event: Sequence[int], risk: Sequence[float], times: Sequence[float],
                       train_time: Sequence[float] | None = None,
                       train_event: Sequence[int] | None = None) -> np.ndarray:
    """Cumulative/dynamic AUC at each of ``times`` (censoring weights from the training outcomes, or from these)."""
    from sksurv.metrics import cumulative_dynamic_auc
    from sksurv.util import Surv

    t, e = _arrays(time, event, risk)
    tt, te = (t, e) if train_time is None else _arrays(train_time, train_event)
    auc, _ = cumulative_dynamic_auc(Surv.from_arrays(te, tt), Surv.from_arrays(e, t), np.asarray(risk, float),
                                    np.asarray(times, float))
    return np.asarray(auc, float)


def risk_groups(risk: Sequence[float], n_groups: int = 2) -> np.ndarray:
    """Group index per patient by predicted risk quantile (0 = lowest risk)."""
    r = np.asarray(risk, float)
    edges = np.quantile(r, np.linspace(0, 1, n_groups + 1)[1:-1])
    return np.searchsorted(edges, r, side="right")


def km_figure(time: Sequence[float], event: Sequence[int], risk: Sequence[float], n_groups: int = 2,
              title: str = "Kaplan–Meier by predicted risk group") -> bytes:
    """PNG: Kaplan–Meier survival curves of the patients split at the predicted-risk quantiles."""
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    t, e = _arrays(time, event, risk)
    groups = risk_groups(risk, n_groups)
    names = ["lower risk", "higher risk"] if n_groups == 2 else [f"risk group {g + 1}" for g in range(n_groups)]
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=110)
    for g in range(n_groups):
        sel = groups == g
        if not sel.any():
            continue
        x, y = kaplan_meier(t[sel], e[sel])
        ax.step(np.concatenate([[0], x]), np.concatenate([[1], y]), where="post",
                label=f"{names[g]} (n={int(sel.sum())}, {int(e[sel].sum())} events)")
    ax.set_xlabel("days from the first film")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def timeline_figure(images: Sequence[np.ndarray], offsets: Sequence[float], probabilities: Sequence[float],
                    title: str, label: str = "P(outcome)") -> bytes:
    """PNG: a patient's films in time order, each captioned with its day and the prediction after that film
    (made from the films up to it only)."""
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.0 * n, 2.5), dpi=110, squeeze=False)
    for ax, image, day, p in zip(axes[0], images, offsets, probabilities):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"day {day:g}\n{label} {p:.2f}", fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
