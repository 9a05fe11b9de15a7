"""Evaluate a severity pipeline against ground truth (metrics from :mod:`cxrlab.evaluate`).

- Disease segmentation (rows with a ``mask_disease``): per-image Dice and IoU of the final disease mask (Stage II
  output restricted to the *predicted* lungs) and their pooled values; on rows with ``finding`` normal and no
  mask: false-positive area (predicted disease pixels / image pixels) and the share of images with any.
- Per-lung involvement (rows with masks): MAE of the predicted infected fraction against the fraction from the
  ground-truth masks; the 0–3 grade's macro-MAE and quadratic kappa against the grade from those masks.
- Zone count: MAE against the count of zones the ground-truth disease touches (0 for a disease-free film), over
  all such images (the scoring paper's test set mixes COVID-19 and normal films) and over those with disease.
- Brixia-style zone and total scores against each reader column set (model–reader and reader–reader rows of
  :func:`cxrlab.evaluate.agreement_table`), Cohen geographic extent / opacity: MAE and R².
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from cxrlab.anatomy.geometry import lung_zones
from cxrlab.anatomy.metrics import dice, jaccard
from cxrlab.data import schema
from cxrlab.errors import CxrlabError
from cxrlab.evaluate import agreement_table, ordinal_metrics, regression_metrics
from cxrlab.io import read_image
from cxrlab.severity.pipeline import SeverityPipeline
from cxrlab.severity.reference import has_reference_masks, reference_masks
from cxrlab.severity.scores import involvement_grade, score_masks

Progress = Callable[[str, int, int, str], None]
ZONES = schema.BRIXIA_ZONES


def _has(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def predict_rows(pipe: SeverityPipeline, df: pd.DataFrame, batch_size: int = 8,
                 progress: Progress | None = None, stage: str = "predict",
                 clear_findings: tuple[str, ...] = ("normal",)) -> pd.DataFrame:
    """Per row: ``pred_*`` scores, and against reference masks (when the row has them) ``dice``, ``iou``,
    ``ref_*`` scores; on disease-free rows (empty mask, or no mask and a finding in ``clear_findings``)
    ``fp_area`` (predicted disease share of the image) and ``fp_any``."""
    out = []
    rows = [r for _, r in df.iterrows()]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        images, kept = [], []
        for row in chunk:
            try:
                images.append(read_image(row[schema.IMAGE])[0])
                kept.append(row)
            except CxrlabError as exc:
                out.append({schema.IMAGE: row[schema.IMAGE], "error": str(exc)})
        for row, image, masks in zip(kept, images, pipe.segment_batch(images) if images else []):
            rec = {schema.IMAGE: row[schema.IMAGE], schema.PATIENT_ID: row[schema.PATIENT_ID], "error": None}
            try:
                res = pipe.score(masks, row[schema.IMAGE], image.shape)
                rec.update({f"pred_{k}": v for k, v in res.record.items()})
            except CxrlabError as exc:
                rec["error"] = str(exc)
                res = None
            pred_d = res.masks[schema.KEY_DISEASE_MASK] if res is not None else np.zeros(image.shape, np.uint8)
            if has_reference_masks(row):
                r, l, d = reference_masks(row)
                rec["dice"], rec["iou"] = dice(pred_d, d), jaccard(pred_d, d)
                rec["tp"], rec["n_pred"], rec["n_true"] = int((pred_d & d).sum()), int(pred_d.sum()), int(d.sum())
                if not d.any():
                    rec["fp_area"], rec["fp_any"] = float(pred_d.mean()), bool(pred_d.any())
                try:
                    ref = score_masks(d, r, l, lung_zones(r, l, pipe.scoring.zone_strategy))
                    rec.update({f"ref_{k}": v for k, v in ref.items()})
                except CxrlabError as exc:
                    rec["ref_error"] = str(exc)
            elif not _has(row.get(schema.MASK_DISEASE)) and row.get(schema.FINDING) in clear_findings:
                rec["fp_area"] = float(pred_d.mean())
                rec["fp_any"] = bool(pred_d.any())
                rec["ref_zone_count"] = 0.0  # a disease-free film touches no zone (the scoring paper's normals)
            out.append(rec)
        if progress:
            progress(stage, min(start + batch_size, len(rows)), len(rows), "two-stage inference")
    return pd.DataFrame(out)


def segmentation_summary(pred: pd.DataFrame) -> dict:
    out: dict = {}
    seg = pred[pred["n_true"] > 0] if "n_true" in pred else pred.iloc[0:0]  # images with disease
    if len(seg):
        out["disease"] = {"n": int(len(seg)), "dice_mean": float(seg["dice"].mean()),
                          "iou_mean": float(seg["iou"].mean()),
                          "dice_pooled": float(2 * seg["tp"].sum() / max(seg["n_pred"].sum() + seg["n_true"].sum(), 1)),
                          "iou_pooled": float(seg["tp"].sum() / max(seg["n_pred"].sum() + seg["n_true"].sum()
                                                                    - seg["tp"].sum(), 1))}
    clear = pred.dropna(subset=["fp_area"]) if "fp_area" in pred else pred.iloc[0:0]
    if len(clear):
        out["normal_false_positive"] = {"n": int(len(clear)), "fp_area_mean": float(clear["fp_area"].mean()),
                                        "fp_area_median": float(clear["fp_area"].median()),
                                        "images_with_any": float(clear["fp_any"].mean())}
    return out


def segmentation_cis(pred: pd.DataFrame, n_boot: int = 200, seed: int = 0) -> dict:
    """Patient-level bootstrap 95 % CIs (``{value, low, high, n_boot}``) of the :func:`segmentation_summary`
    figures and the zone-count MAE, from a :func:`predict_rows` table: ``dice_mean``/``iou_mean`` (per image, over
    images with disease), ``dice_pooled``/``iou_pooled``, ``fp_area_mean``/``fp_any`` (disease-free images) and
    ``zone_count_mae`` (every image with a reference zone count: normal images included, as in the scoring
    paper's test set) and ``zone_count_mae_disease`` (the images with disease only)."""
    from cxrlab.evaluate.bootstrap import bootstrap

    out: dict = {}
    seg = pred[pred["n_true"] > 0].reset_index(drop=True) if "n_true" in pred else pred.iloc[0:0]
    if len(seg):
        d, j = seg["dice"].to_numpy(float), seg["iou"].to_numpy(float)
        tp, npred, ntrue = (seg[c].to_numpy(float) for c in ("tp", "n_pred", "n_true"))

        def stat(idx: np.ndarray) -> dict:
            t, p_, g = tp[idx].sum(), npred[idx].sum(), ntrue[idx].sum()
            return {"dice_mean": float(d[idx].mean()), "iou_mean": float(j[idx].mean()),
                    "dice_pooled": float(2 * t / max(p_ + g, 1)), "iou_pooled": float(t / max(p_ + g - t, 1))}

        est = bootstrap(stat, len(seg), seg[schema.PATIENT_ID].to_numpy(), n_boot=n_boot, seed=seed)
        out.update({k: v.as_dict() for k, v in est.items()})
    clear = pred.dropna(subset=["fp_area"]).reset_index(drop=True) if "fp_area" in pred else pred.iloc[0:0]
    if len(clear):
        area, anyp = clear["fp_area"].to_numpy(float), clear["fp_any"].to_numpy(float)
        est = bootstrap(lambda idx: {"fp_area_mean": float(area[idx].mean()), "fp_any": float(anyp[idx].mean())},
                        len(clear), clear[schema.PATIENT_ID].to_numpy(), n_boot=n_boot, seed=seed)
        out.update({k: v.as_dict() for k, v in est.items()})
    if "ref_zone_count" in pred:
        zc = pred.dropna(subset=["pred_zone_count", "ref_zone_count"]).reset_index(drop=True)
        with_disease = zc["n_true"].fillna(0).to_numpy() > 0 if "n_true" in zc else np.zeros(len(zc), bool)
        for key, part in (("zone_count_mae", zc), ("zone_count_mae_disease", zc[with_disease])):
            if len(part):
                err = (part["pred_zone_count"] - part["ref_zone_count"]).abs().to_numpy(float)
                est = bootstrap(lambda idx: {key: float(err[idx].mean())}, len(part),
                                part[schema.PATIENT_ID].to_numpy(), n_boot=n_boot, seed=seed)
                out[key] = est[key].as_dict() | {"n": int(len(part))}
    return out


def involvement_summary(pred: pd.DataFrame, n_boot: int = 200) -> dict:
    """Per-lung involvement and grade: the two lungs of every image pooled (patients keep the bootstrap honest)."""
    need = ["pred_involvement_right", "ref_involvement_right"]
    if not all(c in pred for c in need):
        return {}
    parts = []
    for side in ("right", "left"):
        sel = pred[[schema.PATIENT_ID, f"pred_involvement_{side}", f"ref_involvement_{side}"]].dropna()
        parts.append(sel.set_axis([schema.PATIENT_ID, "pred", "ref"], axis=1))
    lungs = pd.concat(parts, ignore_index=True)
    if lungs.empty:
        return {}
    pg, rg = involvement_grade(lungs["pred"].to_numpy()), involvement_grade(lungs["ref"].to_numpy())
    grades = ordinal_metrics(rg.astype(int), pg.astype(int), 4, patient_ids=lungs[schema.PATIENT_ID].to_numpy(),
                             n_boot=n_boot)
    frac = regression_metrics(lungs["ref"].to_numpy(), lungs["pred"].to_numpy(),
                              patient_ids=lungs[schema.PATIENT_ID].to_numpy(), n_boot=n_boot)
    out = {"n_lungs": int(len(lungs)), "fraction_mae": frac["metrics"]["mae"], "fraction_r2": frac["metrics"]["r2"],
           "grade_macro_mae": grades["metrics"]["macro_mae"],
           "grade_kappa_quadratic": grades["metrics"]["kappa_quadratic"],
           "grade_support": grades["support"], "grade_confusion": grades["confusion_matrix"]}
    zc = pred[["pred_zone_count", "ref_zone_count"]].dropna() if "ref_zone_count" in pred else pd.DataFrame()
    if len(zc):
        out["zone_count_mae"] = float(np.abs(zc["pred_zone_count"] - zc["ref_zone_count"]).mean())
    return out


def reader_summary(pred: pd.DataFrame, truth: pd.DataFrame, readers: dict[str, str], n_boot: int = 200) -> dict:
    """Brixia zone (0–3) and total (0–18) agreement: model vs each reader and reader vs reader.

    ``readers`` maps a reader name to its column prefix (``{"senior": "brixia_senior_", "junior": ...}``).
    """
    cols = {name: [f"{p}{z}" for z in ZONES] for name, p in readers.items()}
    needed = [c for cs in cols.values() for c in cs]
    if not all(c in truth for c in needed):
        return {}
    df = pred.merge(truth[[schema.IMAGE, *needed]], on=schema.IMAGE).dropna(
        subset=[f"pred_brixia_{z}" for z in ZONES] + needed)
    if df.empty:
        return {}
    pids = df[schema.PATIENT_ID].to_numpy()
    zone = {"model": df[[f"pred_brixia_{z}" for z in ZONES]].to_numpy(float).ravel()}
    total = {"model": df[[f"pred_brixia_{z}" for z in ZONES]].to_numpy(float).sum(axis=1)}
    for name, cs in cols.items():
        zone[name] = df[cs].to_numpy(float).ravel()
        total[name] = df[cs].to_numpy(float).sum(axis=1)
    return {
        "n_images": int(len(df)), "n_patients": int(len(set(pids))),
        "zone": agreement_table(zone, model="model", n_classes=4, patient_ids=np.repeat(pids, len(ZONES)),
                                n_boot=n_boot),
        "total": agreement_table(total, model="model", n_classes=19, patient_ids=pids, n_boot=n_boot),
    }


def cohen_summary(pred: pd.DataFrame, truth: pd.DataFrame, n_boot: int = 200) -> dict:
    out = {}
    for score in (schema.GEOGRAPHIC_EXTENT, schema.OPACITY_SCORE):
        if score not in truth:
            continue
        df = pred.merge(truth[[schema.IMAGE, score]], on=schema.IMAGE).dropna(subset=[f"pred_{score}", score])
        if len(df):
            m = regression_metrics(df[score].to_numpy(float), df[f"pred_{score}"].to_numpy(float),
                                   patient_ids=df[schema.PATIENT_ID].to_numpy(), n_boot=n_boot)
            out[score] = {"n": m["n"], "mae": m["metrics"]["mae"], "r2": m["metrics"]["r2"],
                          "pearson": m["metrics"]["pearson"]}
    return out


def summarize_severity(seg_pred: pd.DataFrame, scored_pred: pd.DataFrame | None = None,
                       scored_truth: pd.DataFrame | None = None, *, readers: dict[str, str] | None = None,
                       n_boot: int = 200) -> dict:
    """Metrics from :func:`predict_rows` tables (so subsets can be summarised without predicting again)."""
    out: dict = {"failed_images": int(seg_pred["error"].notna().sum()) if len(seg_pred) else 0}
    out.update(segmentation_summary(seg_pred))
    out["involvement"] = involvement_summary(seg_pred, n_boot)
    if scored_pred is not None and scored_truth is not None and len(scored_pred):
        out["scored_failed_images"] = int(scored_pred["error"].notna().sum())
        brixia = scored_truth
        if "brixia_split" in brixia:
            brixia = brixia[brixia["brixia_split"] == "test"]
        readers = readers or {"senior": "brixia_senior_", "junior": "brixia_junior_"}
        out["brixia"] = reader_summary(scored_pred, brixia, readers, n_boot)
        out["cohen"] = cohen_summary(scored_pred, scored_truth, n_boot)
    return out


def evaluate_severity(pipe: SeverityPipeline, seg_rows: pd.DataFrame, scored_rows: pd.DataFrame | None = None,
                      *, readers: dict[str, str] | None = None, n_boot: int = 200,
                      progress: Progress | None = None) -> dict:
    """All metrics of the module docstring. ``seg_rows``: images with disease masks (and clear normals);
    ``scored_rows``: images with reader scores (Brixia of ``readers``, Cohen); rows in ``brixia_split`` "train"
    (used to fit the cut-points) are left out of the Brixia figures when that column exists."""
    seg_pred = predict_rows(pipe, seg_rows, progress=progress, stage="segmentation rows")
    scored_pred = None
    if scored_rows is not None and len(scored_rows):
        scored_pred = predict_rows(pipe, scored_rows, progress=progress, stage="scored rows")
    return {"scoring": pipe.scoring.model_dump(mode="json"),
            **summarize_severity(seg_pred, scored_pred, scored_rows, readers=readers, n_boot=n_boot)}
