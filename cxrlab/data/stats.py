"""Dataset summaries (tables the CLI prints): class counts per split and source, images per patient, views,
ages."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrlab.data import schema

AGE_BINS = [0, 18, 40, 60, 80, 200]
AGE_LABELS = ["<18", "18-39", "40-59", "60-79", "80+"]


def class_counts(df: pd.DataFrame, label: str = schema.FINDING, by: str = schema.SOURCE_DATASET) -> pd.DataFrame:
    """Images per ``label`` value (rows) and ``by`` value (columns), with totals; missing labels as '(none)'."""
    if label not in df.columns:
        return pd.DataFrame()
    labels = df[label].astype(object).where(df[label].notna(), "(none)").astype(str)
    groups = df[by].astype(str) if by in df.columns else pd.Series("all", index=df.index)
    table = pd.crosstab(labels, groups, margins=True, margins_name="total")
    return table.rename_axis(index=label, columns=by)


def images_per_patient(df: pd.DataFrame) -> pd.DataFrame:
    """Per source: patients, images, images per patient (mean, median, max), patients with >= 2 images."""
    rows = []
    sources = df[schema.SOURCE_DATASET].astype(str) if schema.SOURCE_DATASET in df.columns else \
        pd.Series("all", index=df.index)
    for source, part in [*df.groupby(sources), ("total", df)]:
        per = part.groupby(part[schema.PATIENT_ID].astype(str)).size()
        rows.append({"source": source, "patients": len(per), "images": int(per.sum()),
                     "mean": round(float(per.mean()), 2), "median": float(per.median()), "max": int(per.max()),
                     "patients_2plus": int((per >= 2).sum())})
    return pd.DataFrame(rows).set_index("source")


def view_counts(df: pd.DataFrame) -> pd.DataFrame:
    return class_counts(df, schema.VIEW) if schema.VIEW in df.columns else pd.DataFrame()


def age_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per source: images with a known age, mean/min/max and counts per age band."""
    if schema.AGE not in df.columns:
        return pd.DataFrame()
    age = pd.to_numeric(df[schema.AGE], errors="coerce")
    sources = df[schema.SOURCE_DATASET].astype(str) if schema.SOURCE_DATASET in df.columns else \
        pd.Series("all", index=df.index)
    rows = []
    for source, part in [*age.groupby(sources), ("total", age)]:
        known = part.dropna()
        bands = pd.cut(known, AGE_BINS, right=False, labels=AGE_LABELS).value_counts().reindex(AGE_LABELS, fill_value=0)
        rows.append({"source": source, "known": len(known), "unknown": int(part.isna().sum()),
                     "mean": round(float(known.mean()), 1) if len(known) else np.nan,
                     "min": float(known.min()) if len(known) else np.nan,
                     "max": float(known.max()) if len(known) else np.nan, **bands.to_dict()})
    return pd.DataFrame(rows).set_index("source")


def summarise(df: pd.DataFrame, label: str = schema.FINDING, split: pd.Series | None = None) -> dict[str, pd.DataFrame]:
    """All tables of ``cxrlab data stats``; with ``split`` (a Series like ``df``), class counts per split too."""
    tables = {"classes per source": class_counts(df, label, schema.SOURCE_DATASET)}
    if split is not None:
        tables["classes per split"] = class_counts(df.assign(split=split.to_numpy()), label, "split")
    tables["images per patient"] = images_per_patient(df)
    tables["views"] = view_counts(df)
    tables["ages"] = age_summary(df)
    return {name: table for name, table in tables.items() if not table.empty}
