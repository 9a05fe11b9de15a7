"""Evaluate a segmenter on manifest rows: Dice, Jaccard and HD95 per structure, per image, per source.

- Structures: each target column (``right_lung``, ``left_lung``, ``heart``...) and, for lung models, ``lungs``
  (the union of both lungs: the "mean lung Dice" of the benchmarks is its mean over images).
- HD95 is reported in pixels of a 256-px longest side (``hd95_px256``) so sources of different resolutions
  compare; images are evaluated at their own resolution.
- Lung convention: ``convention="source"`` scores each image with the lung channels of its source's convention
  (``lung_conventions`` of the run; the shared channels for a source without one), ``None`` with the shared
  channels, a name with that convention's channels. Where the shared channels score a source whose lungs
  exclude the retrocardiac area (SCR), the predicted heart is removed from the predicted lungs first, so each
  source is scored in its own annotators' convention either way.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable

import numpy as np
import pandas as pd

from cxrlab.anatomy.metrics import mask_metrics
from cxrlab.anatomy.postprocess import split_lungs
from cxrlab.anatomy.predict import LungSegmenter
from cxrlab.data import schema
from cxrlab.data.dataset import load_sample, mask_key

REFERENCE_SIDE = 256
METRICS = ("dice", "jaccard", "hd95_px256")


def _has(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _truth(row: pd.Series, targets: list[str], lung_model: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    cols = [c for c in {*targets, schema.MASK_LUNGS} if _has(row.get(c))]
    sample = load_sample(row, mask_columns=sorted(cols), label_columns=[])
    truth = {c: sample[mask_key(c)] for c in cols}
    if lung_model:
        if (schema.MASK_RIGHT_LUNG not in truth or schema.MASK_LEFT_LUNG not in truth) and schema.MASK_LUNGS in truth:
            truth[schema.MASK_RIGHT_LUNG], truth[schema.MASK_LEFT_LUNG] = split_lungs(truth[schema.MASK_LUNGS])
        if schema.MASK_RIGHT_LUNG in truth and schema.MASK_LEFT_LUNG in truth:
            truth[schema.MASK_LUNGS] = (truth[schema.MASK_RIGHT_LUNG] | truth[schema.MASK_LEFT_LUNG]).astype(np.uint8)
    return sample[schema.KEY_IMAGE], truth


def evaluate_segmenter(seg: LungSegmenter, df: pd.DataFrame, batch_size: int = 16,
                       retrocardiac_excluded_sources: list[str] | None = None, convention: str | None = "source",
                       on_item: Callable[[int, int], None] | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-image metrics table (with the ``convention`` each image was scored in) and a summary
    ``{"overall": {...}, "by_source": {source: {...}}}``."""
    cfg = seg.config

    def convention_for(source: str) -> str | None:
        if convention != "source":
            return convention
        name = cfg.convention_of(source)
        return name if name in seg.conventions else None

    if convention != "source":
        seg._check_convention(convention)  # a wrong name fails before any image is read

    excluded = cfg.retrocardiac_excluded_sources if retrocardiac_excluded_sources is None \
        else retrocardiac_excluded_sources
    structures = [(c.removeprefix("mask_"), c) for c in cfg.targets if c in seg.supervised_targets]
    if cfg.is_lung_model:
        structures.append(("lungs", schema.MASK_LUNGS))
    rows: list[dict[str, Any]] = []
    records = [r for _, r in df.iterrows()]
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        loaded = [_truth(r, cfg.targets, cfg.is_lung_model) for r in chunk]
        lung_inputs = None
        if cfg.in_channels == 2:
            lung_inputs = [t.get(cfg.input_mask_column, t.get(schema.MASK_LUNGS)) for _, t in loaded]
        probs = seg.probabilities([im for im, _ in loaded], lung_inputs)
        for row, (image, truth), prob in zip(chunk, loaded, probs):
            source = str(row.get(schema.SOURCE_DATASET))
            spacing = REFERENCE_SIDE / max(image.shape)
            scored_in = convention_for(source) if cfg.is_lung_model else None
            pred = seg.postprocess(prob, scored_in)
            if cfg.is_lung_model and scored_in is None and schema.KEY_HEART_MASK in pred and any(
                    fnmatch.fnmatch(source, p) for p in excluded):
                not_heart = pred[schema.KEY_HEART_MASK] == 0
                for key in (schema.KEY_RIGHT_MASK, schema.KEY_LEFT_MASK, schema.KEY_LUNG_MASK):
                    pred[key] = (pred[key] & not_heart).astype(np.uint8)
            rec: dict[str, Any] = {schema.IMAGE: row[schema.IMAGE], schema.PATIENT_ID: row[schema.PATIENT_ID],
                                   schema.SOURCE_DATASET: source, "convention": scored_in or "shared"}
            if "split" in row:
                rec["split"] = row["split"]
            for name, col in structures:
                if col not in truth:
                    continue
                m = mask_metrics(pred[mask_key(col)], truth[col], spacing)
                rec[f"{name}_dice"], rec[f"{name}_jaccard"], rec[f"{name}_hd95_px256"] = m["dice"], m["jaccard"], m["hd95"]
            rows.append(rec)
        if on_item:
            on_item(min(start + batch_size, len(records)), len(records))
    table = pd.DataFrame(rows)
    return table, summarise(table, [n for n, _ in structures])


def _summary(table: pd.DataFrame, structures: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"n_images": int(len(table))}
    for s in structures:
        if f"{s}_dice" not in table:
            continue
        d = {"n": int(table[f"{s}_dice"].notna().sum())}
        for metric in METRICS:
            v = table[f"{s}_{metric}"].astype(float)
            d[f"{metric}_mean"] = float(np.nanmean(v)) if v.notna().any() else float("nan")
            d[f"{metric}_median"] = float(np.nanmedian(v)) if v.notna().any() else float("nan")
        d["hd95_undefined"] = int(table[f"{s}_hd95_px256"].isna().sum())
        out[s] = d
    return out


def summarise(table: pd.DataFrame, structures: list[str]) -> dict[str, Any]:
    if table.empty:
        return {"overall": {"n_images": 0}, "by_source": {}}
    return {"overall": _summary(table, structures),
            "by_source": {src: _summary(g, structures) for src, g in table.groupby(schema.SOURCE_DATASET)}}
