"""Retrieval quality as the product ranks: best film per patient, the query's own patient never retrieved.

>>> top = patient_neighbours(vectors, patients, queries=q_rows, gallery=g_rows, k=10)   # (n_q, k) row indices
>>> scores = retrieval_scores(top, labels, q_rows)          # per query: precision@k and AP@k for k in (1, 5, 10)
>>> retrieval_benchmark(vectors, labels, patients, sources=sources)   # Estimates with patient-level bootstrap CIs
>>> cols = [retrieval_columns(v_f, labels, patients, queries=q_f) for v_f, q_f in folds]  # cross-fitted folds
>>> summarize_columns({k: np.concatenate([c[k] for c in cols]) for k in cols[0]})        # one pooled estimate

Numpy only. ``AP@k`` = sum over ranks i <= k of precision@i x rel(i), divided by min(k, number of relevant
gallery patients) — 1 when the first k patients are all relevant.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from cxrlab.evaluate.bootstrap import Estimate, bootstrap
from cxrlab.errors import InputError

KS = (1, 5, 10)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1)


def patient_neighbours(vectors: np.ndarray, patients: Sequence[str], queries: np.ndarray | None = None,
                       gallery: np.ndarray | None = None, k: int = 10, chunk: int = 512) -> np.ndarray:
    """Row indices ``(n_queries, k)`` of each query's top ``k`` gallery patients by cosine similarity, one row
    (the best-matching film) per patient, the query's own patient excluded; -1 pads when fewer exist."""
    x = _unit(vectors)
    patients = np.asarray(patients).astype(str)
    if len(patients) != len(x):
        raise InputError("retrieval", f"{len(patients)} patient ids for {len(x)} vectors", field="patient_id")
    queries = np.arange(len(x)) if queries is None else np.asarray(queries)
    gallery = np.arange(len(x)) if gallery is None else np.asarray(gallery)
    g = x[gallery]
    gp = patients[gallery]
    out = np.full((len(queries), k), -1, dtype=np.int64)
    fetch = min(len(gallery), max(20 * k, 200))
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        sims = x[q] @ g.T
        sims[gp[None, :] == patients[q][:, None]] = -np.inf  # own patient (also the query film itself)
        part = np.argpartition(-sims, fetch - 1, axis=1)[:, :fetch] if fetch < len(gallery) else \
            np.tile(np.arange(len(gallery)), (len(q), 1))
        for row in range(len(q)):
            cand = part[row][np.argsort(-sims[row, part[row]], kind="stable")]
            picked = _first_per_patient(cand, gp, sims[row], k)
            if len(picked) < k and fetch < len(gallery):  # many films per patient: rank everything
                picked = _first_per_patient(np.argsort(-sims[row], kind="stable"), gp, sims[row], k)
            out[start + row, :len(picked)] = gallery[picked]
    return out


def _first_per_patient(order: np.ndarray, gp: np.ndarray, sims: np.ndarray, k: int) -> list[int]:
    seen: set[str] = set()
    picked = []
    for j in order:
        if not np.isfinite(sims[j]):
            break
        if gp[j] not in seen:
            seen.add(gp[j])
            picked.append(int(j))
            if len(picked) == k:
                break
    return picked


def retrieval_scores(top: np.ndarray, labels: Sequence, queries: np.ndarray, n_relevant: np.ndarray | None = None,
                     ks: Sequence[int] = KS) -> dict[str, np.ndarray]:
    """Per-query ``precision@k`` and ``ap@k`` for "same label" (``labels`` indexed by row)."""
    labels = np.asarray(labels)
    valid = top >= 0
    rel = np.where(valid, labels[np.where(valid, top, 0)] == labels[np.asarray(queries)][:, None], False)
    cum = np.cumsum(rel, axis=1)
    ranks = np.arange(1, top.shape[1] + 1)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        if k > top.shape[1]:
            raise InputError("retrieval", f"k={k} but only {top.shape[1]} neighbours were ranked")
        out[f"precision@{k}"] = cum[:, k - 1] / k
        denom = np.minimum(k, n_relevant) if n_relevant is not None else np.maximum(cum[:, k - 1], 1)
        out[f"ap@{k}"] = ((cum[:, :k] / ranks[:k]) * rel[:, :k]).sum(axis=1) / np.maximum(denom, 1)
    return out


def retrieval_columns(vectors: np.ndarray, labels: Sequence, patients: Sequence[str],
                      sources: Sequence[str] | None = None, queries: np.ndarray | None = None,
                      gallery: np.ndarray | None = None, ks: Sequence[int] = KS) -> dict[str, np.ndarray]:
    """The per-query values :func:`retrieval_benchmark` averages (``precision@k``, ``ap@k`` and, with
    ``sources``, the source-confound columns; NaN where a column does not apply), plus ``patient_id`` of each
    query. Concatenate the columns of several calls (e.g. cross-fitted folds, each embedded by its own run) and
    pass them to :func:`summarize_columns` for one pooled estimate."""
    labels = np.asarray(labels).astype(str)
    patients = np.asarray(patients).astype(str)
    queries = np.arange(len(labels)) if queries is None else np.asarray(queries)
    gallery = np.arange(len(labels)) if gallery is None else np.asarray(gallery)
    top = patient_neighbours(vectors, patients, queries, gallery, max(ks))
    # relevant gallery patients per query: patients (other than its own) having a film of its label
    g_lab, g_pat = labels[gallery], patients[gallery]
    pairs = {(lab, p) for lab, p in zip(g_lab, g_pat)}
    per_label = {lab: sum(1 for (l2, _) in pairs if l2 == lab) for lab in set(g_lab)}
    n_rel = np.array([per_label.get(labels[q], 0) - ((labels[q], patients[q]) in pairs) for q in queries])
    scores = retrieval_scores(top, labels, queries, n_rel, ks)
    columns: dict[str, np.ndarray] = {k: v.astype(float) for k, v in scores.items()}
    if sources is not None:
        sources = np.asarray(sources).astype(str)
        nn = top[:, 0]
        same_src = (sources[nn] == sources[queries]).astype(float)
        wrong = labels[nn] != labels[queries]
        columns["nn_same_source"] = same_src
        columns["wrong_nn_same_source"] = np.where(wrong, same_src, np.nan)
        g_src = sources[gallery]
        pool = np.array([np.mean(g_src[g_lab != labels[q]] == sources[q]) if (g_lab != labels[q]).any() else np.nan
                         for q in queries])
        columns["wrong_pool_same_source"] = np.where(wrong, pool, np.nan)
    columns["patient_id"] = patients[queries]
    return columns


def summarize_columns(columns: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0) -> dict[str, Estimate]:
    """Means of the per-query columns of :func:`retrieval_columns` with patient-level bootstrap CIs (the query
    patients, ``columns["patient_id"]``, resampled), plus ``n_queries`` and ``n_query_patients``."""
    query_patients = np.asarray(columns["patient_id"]).astype(str)
    values = {k: np.asarray(v, float) for k, v in columns.items() if k != "patient_id"}

    def statistic(idx: np.ndarray) -> dict[str, float]:
        return {name: (float(np.nanmean(v[idx])) if np.isfinite(v[idx]).any() else np.nan)
                for name, v in values.items()}

    result = bootstrap(statistic, len(query_patients), query_patients, n_boot=n_boot, seed=seed)
    result["n_queries"] = Estimate(float(len(query_patients)))
    result["n_query_patients"] = Estimate(float(len(set(query_patients))))
    return result


def retrieval_benchmark(vectors: np.ndarray, labels: Sequence, patients: Sequence[str],
                        sources: Sequence[str] | None = None, queries: np.ndarray | None = None,
                        gallery: np.ndarray | None = None, ks: Sequence[int] = KS, n_boot: int = 1000,
                        seed: int = 0) -> dict[str, Estimate]:
    """Mean precision@k / mAP@k over the query films (leave-one-patient-out) with patient-level bootstrap CIs
    (query patients resampled); with ``sources``: ``nn_same_source`` (share of top-1 from the query's source),
    ``wrong_nn_same_source`` (share of wrong top-1 from the query's source) and its chance level
    ``wrong_pool_same_source`` (share of the query's other-label gallery films from its source)."""
    return summarize_columns(retrieval_columns(vectors, labels, patients, sources, queries, gallery, ks),
                             n_boot=n_boot, seed=seed)
