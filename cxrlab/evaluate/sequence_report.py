"""``build_sequence_report(run_dir)``: a self-contained ``report.html`` for a ``cxrlab sequence cv`` folder.

>>> build_sequence_report("runs/survival_cv")        # reads metrics.json, predictions.csv and the EMB it names

The page has the same style and notice as the evaluation report (:mod:`cxrlab.evaluate.report`): the metric of
the LSTM and of its baselines (last film, mean of films) with 95 % patient bootstrap CIs and the paired
differences; Kaplan–Meier curves by predicted-risk group (Cox head: the out-of-fold log-risk; binary head: the
out-of-fold probability, when the embeddings carry survival time and event); and a timeline per selected
patient: the films in time order, each with the model's output after that film, computed by an LSTM trained on
the other folds' patients from the films up to that film only. Each film shows the Grad-CAM of *that*
output (the sequence model's logit or log-risk after the film) with respect to the film, through the film CNN
that made the embeddings (a trained run or an ImageNet backbone; the fine-tuned CNN when ``features.finetune``),
the earlier films held fixed (:func:`cxrlab.train.sequence_films.sequence_film_cams`). When that CNN cannot be
rebuilt (custom vectors, a moved run) the films are shown plain and the caption says why.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import jinja2
import numpy as np
import pandas as pd

from cxrlab.errors import CxrlabError, InputError
from cxrlab.evaluate.report import _b64
from cxrlab.versions import software_versions
from cxrlab.evaluate.template import SEQUENCE_REPORT_TEMPLATE
from cxrlab.utils import atomic_write_text

log = logging.getLogger(__name__)

MODEL_NAMES = {"lstm": "LSTM over the course", "last": "last film only", "mean": "mean of films' features"}


def _read_cv(run_dir: Path) -> tuple[dict, pd.DataFrame]:
    metrics, preds = run_dir / "metrics.json", run_dir / "predictions.csv"
    for p in (metrics, preds):
        if not p.is_file():
            raise InputError(run_dir, f"no {p.name}: not a `cxrlab sequence cv --out` folder")
    return json.loads(metrics.read_text()), pd.read_csv(preds, dtype={"patient_id": str})


def _config(metrics: dict):
    from cxrlab.train.sequence import SequenceConfig

    return SequenceConfig.model_validate(metrics["recipe"])


def _emb_path(run_dir: Path, metrics: dict, emb: str | os.PathLike | None) -> Path | None:
    if emb is not None:
        return Path(emb)
    named = metrics.get("embeddings")
    return Path(named) if named else None


def patient_survival(meta: pd.DataFrame, time_column: str, event_column: str) -> pd.DataFrame:
    """Per patient: time from the first dated film to the recorded survival time, and the event (as
    ``build_sequences`` computes them for a survival head); patients without both are left out."""
    from cxrlab.data import schema

    need = [schema.PATIENT_ID, schema.OFFSET_DAYS, time_column, event_column]
    if any(c not in meta.columns for c in need):
        return pd.DataFrame(columns=["patient_id", "time", "event"])
    df = pd.DataFrame({"patient_id": meta[schema.PATIENT_ID].astype(str),
                       "offset": pd.to_numeric(meta[schema.OFFSET_DAYS], errors="coerce"),
                       "t": pd.to_numeric(meta[time_column], errors="coerce"),
                       "e": pd.to_numeric(meta[event_column], errors="coerce")})
    df = df[np.isfinite(df["offset"])]
    g = df.groupby("patient_id")
    out = pd.DataFrame({"time": g["t"].max() - g["offset"].min(), "event": g["e"].max()}).reset_index()
    return out[np.isfinite(out["time"]) & np.isfinite(out["event"])].astype({"event": int})


def km_section(metrics: dict, preds: pd.DataFrame, meta: pd.DataFrame | None, n_groups: int = 2) -> dict:
    """``{"figures": [{caption, b64}], "note": str}``: Kaplan–Meier by out-of-fold predicted-risk group."""
    from cxrlab.evaluate.survival import km_figure

    config = _config(metrics)
    kind = config.outcome.kind
    if kind == "survival":
        table, what = preds, "out-of-fold Cox log-risk"
    else:
        if meta is None:
            return {"figures": [], "note": "no Kaplan–Meier curves: the embeddings file is not available"}
        surv = patient_survival(meta, config.outcome.time_column, config.outcome.event_column)
        table = preds.merge(surv, on="patient_id", how="inner")
        what = f"out-of-fold predicted P({config.outcome.column})"
        if len(table) < 2 * n_groups or table["event"].sum() == 0:
            return {"figures": [], "note": (f"no Kaplan–Meier curves: the data record no survival time and event "
                                            f"({config.outcome.time_column}, {config.outcome.event_column}) for "
                                            f"enough of these patients ({len(table)} with both)")}
    figs = []
    for mode in [m for m in ("lstm", "last", "mean") if f"pred_{m}" in table.columns]:
        png = km_figure(table["time"], table["event"], table[f"pred_{mode}"], n_groups=n_groups,
                        title=f"{MODEL_NAMES[mode]}: KM by {what}")
        figs.append({"caption": f"Kaplan–Meier survival of {len(table)} patients ({int(table['event'].sum())} "
                                f"events, {config.outcome.event_column}) split at the median of the {what} of the {MODEL_NAMES[mode]} model; "
                                "days from each patient's first film.", "b64": _b64(png)})
    return {"figures": figs, "note": ""}


def select_patients(preds: pd.DataFrame, kind: str, n: int) -> list[str]:
    """Up to ``n`` patients of the first fold, longest courses first, alternating outcome (events first)."""
    fold = preds[preds["fold"] == preds["fold"].min()]
    y = fold["label"] if kind == "binary" else fold["event"]
    order = fold.assign(_y=y.to_numpy()).sort_values(["n_films", "patient_id"], ascending=[False, True])
    pos = list(order.loc[order["_y"] == 1, "patient_id"])
    neg = list(order.loc[order["_y"] != 1, "patient_id"])
    picked: list[str] = []
    while len(picked) < n and (pos or neg):
        for group in (pos, neg):
            if group and len(picked) < n:
                picked.append(group.pop(0))
    return picked


def sequence_timelines(run_dir: str | os.PathLike, *, emb: str | os.PathLike | None = None, n_patients: int = 3,
                       patients: Sequence[str] | None = None) -> dict[str, Any]:
    """The timeline data of the report: an LSTM trained on the patients outside the selected patients' fold
    (the same folds as the cv), and per selected patient its films (``images``, ``image_paths``,
    ``offsets``) and ``outputs``: the model's output after each film (probability, or log-risk for a Cox head),
    from the films up to that film only. Returns ``{"model", "config", "sequences", "patients": [...],
    "embeddings_info"}``."""
    from cxrlab.retrieval import read_embeddings
    from cxrlab.train.sequence import build_sequences, fit_sequence_model, predict_sequences

    run_dir = Path(run_dir)
    metrics, preds = _read_cv(run_dir)
    path = _emb_path(run_dir, metrics, emb)
    if path is None:
        raise InputError(run_dir, "metrics.json names no embeddings file: pass emb=")
    embeddings = read_embeddings(path)
    config = _config(metrics)
    min_films = int(metrics.get("min_films", 1))
    seqs = [s for s in build_sequences(embeddings, config, str(path)) if len(s.offsets) >= min_films]
    by_id = {s.patient_id: s for s in seqs}
    fold_of = dict(zip(preds["patient_id"].astype(str), preds["fold"]))
    chosen = list(patients) if patients is not None else select_patients(preds, config.outcome.kind, n_patients)
    unknown = [p for p in chosen if p not in by_id or p not in fold_of]
    if unknown:
        raise InputError(run_dir, f"patient(s) {', '.join(unknown)} not in this cross-validation")
    folds = {fold_of[p] for p in chosen}
    train = [s for s in seqs if fold_of.get(s.patient_id) not in folds]
    films = None
    if config.features.finetune:
        from cxrlab.train.sequence_films import film_store_for

        films = film_store_for(embeddings.info, config.features.train_blocks)
    model = fit_sequence_model(train, config, "lstm", films=films)
    shown = [by_id[p] for p in chosen]
    steps = predict_sequences(model, shown, config, per_step=True) if shown else []
    paths = dict(zip(embeddings.meta["image"].astype(str), embeddings.meta.get("image_path",
                                                                              embeddings.meta["image"]).astype(str)))
    out = []
    for s, st in zip(shown, steps):
        out.append({"patient_id": s.patient_id, "images": list(s.images), "image_paths": [paths[str(i)] for i in
                                                                                          s.images],
                    "offsets": [float(o) for o in s.offsets], "outputs": [float(v) for v in st],
                    "label": s.label, "time": s.time, "event": s.event, "fold": int(fold_of[s.patient_id])})
    return {"model": model, "config": config, "sequences": shown, "patients": out,
            "embeddings_info": embeddings.info, "n_train": len(train)}


def _film_images(model: Any, seq: Any, source: dict, cam_method: str) -> tuple[list[np.ndarray], str]:
    """Per film: an RGB overlay of the sequence model's Grad-CAM (or the plain film), and what they show."""
    from cxrlab.explain.overlay import overlay
    from cxrlab.io import read_image
    from cxrlab.train.sequence_films import FilmCNN, FilmSequenceModel, sequence_film_cams

    try:
        cnn = model.cnn if isinstance(model, FilmSequenceModel) else FilmCNN.from_source(source)
        images, maps = sequence_film_cams(model, seq, cnn, cam_method)
    except (CxrlabError, ImportError, OSError, KeyError) as exc:
        log.warning("timeline without Grad-CAM: %s", exc)
        return [read_image(p)[0] for p in seq.paths], f"films without heatmaps: the film CNN is not available ({exc})"
    if isinstance(model, FilmSequenceModel):
        what = "the fine-tuned film CNN"
    elif source.get("kind") == "run":
        what = f"the film CNN that made the embeddings (run {Path(source['run']).name})"
    else:
        what = f"the film CNN that made the embeddings ({source.get('backbone')}, {source.get('weights')} weights)"
    return ([overlay(img, heat).astype(np.float32) / 255.0 for img, heat in zip(images, maps)],
            f"{cam_method} of the sequence model's output after each film with respect to that film (the earlier "
            f"films held fixed), through {what}, in the CNN's input frame")


def timeline_section(run_dir: Path, emb: str | os.PathLike | None, n_patients: int, cam_method: str) -> dict:
    from cxrlab.evaluate.survival import timeline_figure

    tl = sequence_timelines(run_dir, emb=emb, n_patients=n_patients)
    config = tl["config"]
    binary = config.outcome.kind == "binary"
    label = f"P({config.outcome.column})" if binary else "log-risk"
    source = tl["embeddings_info"].get("source", {})
    items = []
    for p, seq in zip(tl["patients"], tl["sequences"]):
        images, shows = _film_images(tl["model"], seq, source, cam_method)
        outcome = (f"{config.outcome.column} = {int(p['label'])}" if binary else
                   f"{'event' if p['event'] else 'censored'} at day {p['time']:g}")
        png = timeline_figure(images, p["offsets"], p["outputs"], f"patient {p['patient_id']} ({outcome})",
                              label=label)
        items.append({"patient_id": p["patient_id"], "b64": _b64(png), "outputs": p["outputs"],
                      "offsets": p["offsets"],
                      "caption": (f"Patient {p['patient_id']} (fold {p['fold']}, recorded {outcome}): "
                                  f"{len(p['offsets'])} films in time order, each titled with its day and the "
                                  f"{label} after that film from the films up to it only (an LSTM trained on "
                                  f"the {tl['n_train']} patients of the other folds). Shown: {shows}.")})
    return {"items": items, "label": label}


def build_sequence_report(run_dir: str | os.PathLike, *, emb: str | os.PathLike | None = None,
                          out: str | os.PathLike | None = None, n_patients: int = 3,
                          cam_method: str = "gradcam") -> Path:
    """Write ``report.html`` (default into ``run_dir``) for a ``cxrlab sequence cv`` folder; returns its path.

    ``emb``: the embeddings file of the cv (default: the one its ``metrics.json`` names); without it the report
    has the metric table only (and Kaplan–Meier curves for a Cox head)."""
    run_dir = Path(run_dir)
    metrics, preds = _read_cv(run_dir)
    config = _config(metrics)
    path = _emb_path(run_dir, metrics, emb)
    meta = None
    timelines: dict[str, Any] = {"items": [], "error": ""}
    if path is None or not path.is_file():
        timelines["error"] = f"the embeddings file {path or '(not named in metrics.json)'} is not available"
    else:
        from cxrlab.retrieval import read_embeddings

        meta = read_embeddings(path).meta
        if n_patients > 0:
            try:
                timelines = {**timeline_section(run_dir, path, n_patients, cam_method), "error": ""}
            except CxrlabError as exc:
                timelines["error"] = str(exc)
    km = km_section(metrics, preds, meta)
    est = metrics["estimates"]
    rank = {m: i for i, m in enumerate(MODEL_NAMES)}
    order = sorted(est, key=lambda k: ("-" in k, rank.get(k.rsplit("-", 1)[-1], len(rank)), k))
    rows = [{"name": MODEL_NAMES.get(k, k), "key": k, "e": est[k]} for k in order if "-" not in k]
    diffs = [{"name": f"LSTM − {MODEL_NAMES.get(k.split('-', 1)[1], k)}", "key": k, "e": est[k]}
             for k in order if "-" in k]
    counts = preds.groupby("fold").size().to_dict()
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    html = env.from_string(SEQUENCE_REPORT_TEMPLATE).render(
        run_name=config.name, run_dir=str(run_dir.resolve()), config=config, metrics=metrics, rows=rows,
        diffs=diffs, n_films=preds["n_films"], folds=counts, km=km, timelines=timelines,
        emb=str(path) if path else None, recipe_text=json.dumps(metrics["recipe"], indent=2),
        versions=software_versions(), generated=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    target = Path(out) if out is not None else run_dir / "report.html"
    atomic_write_text(target, html)
    return target
