"""``build_report(run_dir, ...)``: ``metrics.json`` and a self-contained ``report.html`` for a run directory.

Everything the HTML shows is embedded (figures and overlays as base64 PNG), so the file can be mailed or
attached to a paper's supplement. Heatmaps need the run's model (torch): they are computed by
``cxrlab.explain``, imported only here and only when the gallery is requested, so the metric modules stay
torch-free.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import jinja2
import numpy as np
import pandas as pd

from cxrlab.errors import CxrlabError, InputError
from cxrlab.evaluate import figures
from cxrlab.evaluate.bootstrap import DEFAULT_N_BOOT
from cxrlab.evaluate.evaluation import SUBGROUP_KEYS, eval_split, evaluate_predictions, fingerprint, labelled
from cxrlab.evaluate.run import SPLIT, RunData, Target, read_run, targets_of
from cxrlab.evaluate.template import REPORT_TEMPLATE
from cxrlab.utils import atomic_write_json, atomic_write_text
from cxrlab.versions import software_versions

log = logging.getLogger(__name__)

MASK_COLUMNS = ("mask_lungs", "mask_right_lung", "mask_left_lung")


def _resolve_images(df: pd.DataFrame, base: Path) -> pd.DataFrame:
    df = df.copy()
    df["image"] = [str(Path(p) if Path(p).is_absolute() else (base / p).resolve()) for p in df["image"].astype(str)]
    return df


def load_readers(readers: str | os.PathLike | pd.DataFrame | None) -> pd.DataFrame | None:
    """A reader table: ``image`` plus ``<target column>@<reader>`` columns (paths relative to the file)."""
    if readers is None or isinstance(readers, pd.DataFrame):
        return readers
    from cxrlab.data.manifest import read_table

    path = Path(readers)
    table = read_table(path)
    if "image" not in table.columns:
        raise InputError(path, "reader table needs an 'image' column", field="image")
    return _resolve_images(table, path.parent)


def merge_manifest(pred: pd.DataFrame, data: str | os.PathLike | None) -> pd.DataFrame:
    """Add the manifest's columns (sex, age, view, masks...) that the predictions lack, joined on the image."""
    if data is None:
        return pred
    from cxrlab.data.manifest import load_manifest

    manifest = load_manifest(data).df
    extra = [c for c in manifest.columns if c not in pred.columns]
    merged = pred.merge(manifest[["image", *extra]].drop_duplicates("image"), on="image", how="left")
    if extra and merged[extra].isna().all(axis=None):
        raise InputError(data, "no image of the run's predictions is listed in this manifest")
    return merged


def _b64(png: bytes | None) -> str | None:
    return base64.b64encode(png).decode("ascii") if png else None


def _figures(result: dict) -> dict[tuple[str, str], list[dict]]:
    figs: dict[tuple[str, str], list[dict]] = {}
    for name, t in result["targets"].items():
        for split, r in t["splits"].items():
            items = []
            m = r["metrics"]
            if t["kind"] == "binary" and "roc" in r:
                items.append(("ROC curve", figures.roc_figure({name: r["roc"]}, {name: m["auc"]["value"]},
                                                              f"{name} ({split})")))
                items.append(("Precision-recall curve", figures.pr_figure(
                    {name: r["pr"]}, {name: m["prevalence"]["value"]}, f"{name} ({split})")))
            if t["kind"] == "multiclass" and r.get("roc"):
                aucs = {c: m.get(f"auc[{t['classes'].index(c)}]", {}).get("value", float("nan")) for c in r["roc"]}
                items.append(("ROC curves, one-vs-rest", figures.roc_figure(r["roc"], aucs, f"{name} ({split})")))
                prev = {c: r["support"][t["classes"].index(c)] / r["n"] for c in r["pr"]}
                items.append(("Precision-recall, one-vs-rest", figures.pr_figure(r["pr"], prev, f"{name} ({split})")))
            if "confusion_matrix" in r:
                items.append(("Confusion matrix (rows true, columns predicted)",
                              figures.confusion_figure(r["confusion_matrix"], t["classes"], f"{name} ({split})")))
            if "calibration" in r:
                items.append(("Reliability curve (counts per bin)", figures.calibration_figure(
                    r["calibration"]["curve"], r["calibration"]["ece"], f"{name} ({split})")))
            if t["kind"] == "regression" and "points" in r:
                ba = {k.split(".", 1)[1]: v["value"] for k, v in m.items() if k.startswith("bland_altman.")}
                items.append(("Prediction vs truth; Bland-Altman (bias, 95 % limits)", figures.bland_altman_figure(
                    r["points"]["truth"], r["points"]["pred"], ba, f"{name} ({split})")))
            figs[(name, split)] = [{"caption": c, "b64": _b64(png)} for c, png in items]
    return figs


def pick_gallery_cases(df: pd.DataFrame, target: Target, per_class: int) -> list[dict]:
    """Per true class: the ``per_class`` most confident correct and wrong cases (by predicted-class prob)."""
    df = labelled(df, target)
    y, pred = target.truth(df), target.predicted(df)
    if target.kind == "binary":
        pred = (pred >= 0.5).astype(float)
    probs = target.probs(df)
    conf = probs.max(axis=1) if probs is not None and probs.shape[1] > 1 else np.abs(target.predicted(df) - 0.5)
    groups = []
    for k, cls in enumerate(target.classes):
        for correct in (True, False):
            sel = np.flatnonzero((y == k) & ((pred == k) == correct))
            sel = sel[np.argsort(-conf[sel], kind="stable")][:per_class]
            groups.append({"true": cls, "correct": correct, "rows": df.iloc[sel], "pred": pred[sel]})
    return groups


def _explain(run_dir: Path, df: pd.DataFrame, targets: Sequence[Target], method: str, per_class: int,
             threshold: float, max_hcs_images: int, seed: int, lung_model: str | os.PathLike | None,
             hcs_definition: str) -> dict:
    """HCS table per head and the gallery; ``{"error": reason}`` when heatmaps cannot be made."""
    try:
        from cxrlab.explain.run import explain_rows, load_explain_model
    except ImportError as exc:  # torch stack missing: the metric report still stands
        return {"error": f"cxrlab.explain unavailable ({exc})"}
    try:
        em = load_explain_model(run_dir, lung_model=lung_model)
    except CxrlabError as exc:
        return {"error": str(exc)}
    heads = em.heads()
    per_lung = em.pipeline.per_image == 2
    out: dict[str, Any] = {"method": method, "threshold": threshold, "definition": hcs_definition,
                           "per_lung": per_lung, "hcs": {}, "gallery": {}}
    has_masks = lung_model is not None or any(c in df.columns and df[c].notna().any() for c in MASK_COLUMNS)
    head_of = {}
    for t in targets:
        head = next((h for h, info in heads.items()
                     if info["task"] == t.task and info.get("column") in (t.column, t.task)), None)
        if head is not None and t.kind != "regression":
            head_of[t.name] = head
    # HCS per task: the heatmap of its head, or the paper's average of its per-lung heads (opacity right + left)
    by_task: dict[str, list[Target]] = {}
    for t in targets:
        if t.name in head_of:
            by_task.setdefault(t.task, []).append(t)
    for task, group in by_task.items() if has_masks else ():
        task_heads = list(dict.fromkeys(head_of[t.name] for t in group))
        out["hcs"][task] = _task_hcs(em, df, group, task_heads, method, threshold, max_hcs_images, seed,
                                     masks_required=lung_model is None, hcs_definition=hcs_definition)
    for t in targets:
        if t.name not in head_of:
            continue
        head = head_of[t.name]
        part = labelled(df, t)
        groups = []
        cases = pick_gallery_cases(part, t, per_class)
        # one batched pass over every case of this target, then split back into the groups
        rendered_all = explain_rows(em, [r for g in cases for r in g["rows"].to_dict("records")], head, method,
                                    threshold, hcs_definition=hcs_definition)
        start = 0
        for g in cases:
            rendered = rendered_all[start:start + len(g["rows"])]
            start += len(g["rows"])
            items = []
            for r, p in zip(rendered, g["pred"]):
                pred_name = t.classes[int(p)] if 0 <= int(p) < len(t.classes) else str(p)
                hcs = "" if not np.isfinite(r["hcs"]) else f", HCS {r['hcs']:.2f}"
                items.append({"caption": f"{Path(r['image']).name}: predicted {pred_name}{hcs}",
                              "b64": _b64(_png(r["overlay"]))})
            groups.append({"true": g["true"], "correct": g["correct"], "items": items})
        out["gallery"][t.name] = groups
    if not has_masks:
        out["hcs_note"] = ("no lung masks: pass --data with mask_lungs or mask_right_lung/mask_left_lung, or "
                           "--lung-model RUN")
    return out


def _check_hcs_definition(name: str) -> None:
    try:
        from cxrlab.explain.hcs import HCS_DEFINITIONS
    except ImportError:  # no torch stack: the report says heatmaps are unavailable
        return
    HCS_DEFINITIONS.get(name)


def _task_hcs(em: Any, df: pd.DataFrame, group: Sequence[Target], heads: list[str], method: str, threshold: float,
              max_images: int, seed: int, masks_required: bool, hcs_definition: str) -> dict:
    """HCS per image of a task's heatmap (heads averaged), then the mean per class and over classes.

    An image's class is its truth for a one-target task, its highest grade over the task's targets otherwise
    (e.g. the worse lung for per-lung opacity). At most ``max_images`` images, drawn with ``seed``.
    """
    from cxrlab.explain.run import explain_rows

    truth = np.stack([t.truth(df) for t in group], axis=1)
    labelled_rows = np.isfinite(truth).any(axis=1)
    if masks_required:
        labelled_rows &= df[[c for c in MASK_COLUMNS if c in df.columns]].notna().any(axis=1).to_numpy()
    part = df[labelled_rows]
    cls = np.nanmax(truth[labelled_rows], axis=1)
    if len(part) > max_images:
        pick = np.sort(np.random.default_rng(seed).choice(len(part), max_images, replace=False))
        part, cls = part.iloc[pick], cls[pick]
    res = explain_rows(em, part.to_dict("records"), heads, method, threshold, with_overlay=False,
                       hcs_definition=hcs_definition)
    hcs = np.array([r["hcs"] for r in res], dtype=float)
    fraction = np.array([r["lung_fraction"] for r in res], dtype=float)
    table: dict[str, Any] = {"heads": heads, "per_class": {}, "n": {}, "chance": {},
                             "per_image": [{"image": Path(r["image"]).name, "class": group[0].classes[int(c)],
                                            "hcs": r["hcs"], "lung_fraction": r["lung_fraction"]}
                                           for r, c in zip(res, cls)]}
    for k, name in enumerate(group[0].classes):
        sel = (cls == k) & np.isfinite(hcs)
        if sel.any():
            table["per_class"][name] = float(hcs[sel].mean())
            table["n"][name] = int(sel.sum())
            table["chance"][name] = float(np.nanmean(fraction[sel]))
    table["macro"] = float(np.mean(list(table["per_class"].values()))) if table["per_class"] else float("nan")
    return table


def _png(rgb: np.ndarray) -> bytes:
    from cxrlab.explain.overlay import png_bytes

    return png_bytes(rgb)


def _strip_private(obj: Any) -> Any:
    """metrics.json: drop the bulky per-point regression arrays, keep everything else."""
    if isinstance(obj, dict):
        return {k: _strip_private(v) for k, v in obj.items() if k != "points"}
    if isinstance(obj, list):
        return [_strip_private(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def build_report(
    run_dir: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    readers: str | os.PathLike | pd.DataFrame | None = None,
    out: str | os.PathLike | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    gallery: bool = True,
    cam_method: str = "gradcam",
    per_class: int = 2,
    hcs_threshold: float = 0.5,
    max_hcs_images: int = 200,
    lung_model: str | os.PathLike | None = None,
    hcs_definition: str = "nonzero",
) -> Path:
    """Evaluate the run and write ``metrics.json`` and ``report.html`` into ``out`` (default
    ``RUN/evaluation/``; the run's own ``metrics.json`` from training is left untouched). Returns the HTML path.

    ``data``: manifest joined on the image (subgroup columns, lung masks); ``readers``: reader table (see
    ``evaluation.reader_agreement``); ``lung_model``: segmentation run predicting lung masks for HCS when the
    manifest has none; ``max_hcs_images``: HCS on a seeded sample of at most this many headline-split images;
    ``hcs_definition``: ``nonzero`` (the paper's pixel share) or ``mass`` (mass at or above ``hcs_threshold``).
    """
    if gallery:
        _check_hcs_definition(hcs_definition)  # a misspelt name fails before the metrics are computed
    run: RunData = read_run(run_dir)
    df = merge_manifest(run.predictions, data)
    targets = targets_of(run.tasks, df)
    result = evaluate_predictions(df, targets, readers=load_readers(readers), n_boot=n_boot, seed=seed)
    result["data_fingerprint"] = fingerprint(df, [t.column for t in targets])
    result["run"] = {"dir": str(Path(run_dir).resolve()), "training_seed": run.recipe.get("seed"),
                     "recipe_name": run.recipe.get("name")}
    result["software"] = software_versions()
    headline = eval_split(df)
    explain: dict = {"error": "not requested (gallery=False)"}
    if gallery:
        part = df if headline == "all" else df[df[SPLIT].astype(str) == headline]
        explain = _explain(Path(run_dir), part, targets, cam_method, per_class, hcs_threshold, max_hcs_images, seed,
                           lung_model, hcs_definition)
        if "hcs" in explain:
            result["hcs"] = {"method": cam_method, "definition": hcs_definition, "threshold": hcs_threshold,
                             "per_target": explain["hcs"]}
        if explain.get("error"):
            log.warning("no heatmaps in the report: %s", explain["error"])
    out_dir = Path(out) if out is not None else Path(run_dir) / "evaluation"
    atomic_write_json(out_dir / "metrics.json", _strip_private(result))
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    html = env.from_string(REPORT_TEMPLATE).render(
        run_name=run.recipe.get("name") or Path(run_dir).name, m=result, targets=[t.name for t in targets
                                                                                  if t.kind != "regression"],
        figs=_figures(result), subgroup_keys=SUBGROUP_KEYS,
        learning_curves=_b64(figures.learning_curves_figure(run.history)), explain=explain,
        run_dir=str(Path(run_dir).resolve()), training_seed=run.recipe.get("seed"), versions=result["software"],
        recipe_text=run.recipe_text or "(no recipe.yaml)",
        generated=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    path = out_dir / "report.html"
    atomic_write_text(path, html)
    return path
