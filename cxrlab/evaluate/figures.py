"""Report figures with matplotlib (Agg backend), returned as PNG bytes for embedding."""

from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: never open a window, never need a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

DPI = 100


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def roc_figure(curves: dict[str, dict], aucs: dict[str, float], title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for name, c in curves.items():
        ax.plot(c["fpr"], c["tpr"], label=f"{name} (AUC {aucs.get(name, float('nan')):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def pr_figure(curves: dict[str, dict], prevalences: dict[str, float], title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for name, c in curves.items():
        line, = ax.plot(c["recall"], c["precision"], label=name)
        if name in prevalences:
            ax.axhline(prevalences[name], ls=":", lw=0.8, c=line.get_color())
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower left")
    return _png(fig)


def _draw_confusion(ax, cm: Sequence[Sequence[int]], classes: Sequence[str], xlabel: str, ylabel: str, title: str,
                    rotate: bool = True) -> None:
    cm = np.asarray(cm)
    k = len(classes)
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=9)
    ax.set_xticks(range(k), classes, rotation=45 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)


def confusion_figure(cm: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> bytes:
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * k, 1.0 + 0.7 * k))
    _draw_confusion(ax, cm, classes, "predicted", "true", title)
    return _png(fig)


def calibration_figure(curve: dict, ece: float, title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="perfect")
    ax.plot(curve["confidence"], curve["observed"], marker="o", label=f"model (ECE {ece:.3f})")
    for x, y, n in zip(curve["confidence"], curve["observed"], curve["count"]):
        ax.annotate(str(n), (x, y), fontsize=6, xytext=(2, -8), textcoords="offset points")
    ax.set(xlabel="predicted probability", ylabel="observed frequency", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def learning_curves_figure(history: pd.DataFrame) -> bytes | None:
    """Every numeric column of history.csv against the epoch: losses on one axis, other metrics on another."""
    if history is None or history.empty:
        return None
    x = history["epoch"] if "epoch" in history.columns else np.arange(1, len(history) + 1)
    numeric = [c for c in history.columns if c != "epoch" and pd.api.types.is_numeric_dtype(history[c])]
    losses = [c for c in numeric if "loss" in c]
    # validation metrics only: throughput, timing, learning rate and flags have other scales
    others = [c for c in numeric if c.startswith("val_") and c not in losses]
    fig, axes = plt.subplots(1, 2 if others else 1, figsize=(9 if others else 4.5, 3.6), squeeze=False)
    for c in losses:
        axes[0, 0].plot(x, history[c], label=c)
    axes[0, 0].set(xlabel="epoch", ylabel="loss", title="loss")
    axes[0, 0].legend(fontsize=7)
    if others:
        for c in others[:8]:
            axes[0, 1].plot(x, history[c], label=c)
        axes[0, 1].set(xlabel="epoch", title="validation metrics")
        axes[0, 1].legend(fontsize=7)
    return _png(fig)


def bland_altman_figure(truth: Sequence[float], pred: Sequence[float], ba: dict, title: str) -> bytes:
    t, p = np.asarray(truth, float), np.asarray(pred, float)
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.8))
    axes[0].scatter(t, p, s=8, alpha=0.6)
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    axes[0].plot([lo, hi], [lo, hi], ls="--", c="grey", lw=0.8)
    axes[0].set(xlabel="truth", ylabel="prediction", title=title)
    axes[1].scatter((t + p) / 2, p - t, s=8, alpha=0.6)
    for v, ls in ((ba["bias"], "-"), (ba["loa_low"], "--"), (ba["loa_high"], "--")):
        axes[1].axhline(v, ls=ls, c="crimson", lw=0.9)
    axes[1].set(xlabel="mean of truth and prediction", ylabel="prediction - truth", title="Bland-Altman")
    return _png(fig)


def confusion_panels_figure(panels: Sequence[tuple[str, Sequence[Sequence[int]], str, str]],
                            classes: Sequence[str]) -> bytes:
    """Several confusion matrices side by side; each panel is ``(title, matrix, x label, y label)``."""
    k = len(classes)
    fig, axes = plt.subplots(1, len(panels), figsize=((1.4 + 0.6 * k) * len(panels), 1.2 + 0.6 * k), squeeze=False)
    for ax, (title, cm, xlabel, ylabel) in zip(axes[0], panels):
        _draw_confusion(ax, cm, classes, xlabel, ylabel, title, rotate=False)
    fig.tight_layout()
    return _png(fig)


def ranking_scatter_figure(points: Sequence[tuple[str, float, float, bool]], xlabel: str, ylabel: str,
                           title: str) -> bytes:
    """One point per candidate ``(label, x, y, kept)``; kept candidates filled, the others hollow."""
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for label, x, y, kept in points:
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        ax.scatter([x], [y], s=40, c="tab:blue" if kept else "white", edgecolors="tab:blue")
        ax.annotate(label, (x, y), fontsize=6, xytext=(4, 3), textcoords="offset points")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    return _png(fig)
