"""Shared vocabulary mapping for importers: views, sexes, yes/no, findings, building the Manifest."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.data.manifest import Manifest

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".tif", ".tiff", ".bmp"}

_VIEWS = {
    "PA": "PA", "POSTERO_ANTERIOR": "PA", "POSTEROANTERIOR": "PA",
    "AP": "AP", "ANTERO_POSTERIOR": "AP", "ANTEROPOSTERIOR": "AP", "AP ERECT": "AP", "AP UPRIGHT": "AP",
    "AP SUPINE": "AP Supine", "APS": "AP Supine", "SUPINE AP": "AP Supine",
    "L": "L", "LL": "L", "LAT": "L", "LATERAL": "L", "RL": "L", "RLAT": "L", "LLAT": "L",
}


def normalise_view(value: object) -> str:
    """Map the many spellings of a view to schema.VIEWS; anything unknown becomes 'unknown'."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "unknown"
    key = re.sub(r"[\s\-]+", " ", str(value).strip().upper())
    return _VIEWS.get(key, _VIEWS.get(key.replace(" ", "_"), "unknown"))


def normalise_sex(value: object) -> str | None:
    text = str(value).strip().upper() if value is not None and not pd.isna(value) else ""
    if text in {"M", "MALE", "MAN"}:
        return "M"
    if text in {"F", "FEMALE", "WOMAN"}:
        return "F"
    return None


def yes_no(value: object) -> float:
    """Y/N, yes/no, true/false, 1/0 -> 1.0/0.0; anything else (blank, '?', free text) -> NaN."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.nan
    text = str(value).strip().lower()
    if text in {"y", "yes", "true", "t", "1", "1.0"}:
        return 1.0
    if text in {"n", "no", "false", "f", "0", "0.0"}:
        return 0.0
    return np.nan


# ieee8023 / generic finding names -> coarse finding (canonical vocabulary extends schema.FINDINGS).
_VIRAL = {"sars", "mers", "mers-cov", "varicella", "influenza", "herpes", "h1n1", "viral", "rsv"}
_BACTERIAL = {"streptococcus", "klebsiella", "mycoplasma", "legionella", "e.coli", "chlamydophila", "bacterial",
              "staphylococcus", "nocardia", "mycoplasma bacterial pneumonia", "tuberculosis", "lobar pneumonia"}
_FUNGAL = {"pneumocystis", "aspergillosis", "candida", "histoplasmosis", "cryptococcus", "fungal"}


def coarse_finding(value: object) -> str:
    """'Pneumonia/Viral/COVID-19', 'COVID-19, ARDS', 'Streptococcus', 'No Finding', 'todo' -> coarse class."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "unlabeled"
    text = str(value).strip().lower()
    parts = {p.strip() for p in re.split(r"[/,]", text) if p.strip()}
    if "covid-19" in parts or "covid19" in parts or "covid" in parts:
        return "covid19"
    if text in {"no finding", "normal"}:
        return "normal"
    if text in {"todo", "unknown", ""}:
        return "unlabeled"
    if parts & _BACTERIAL:
        return "bacterial"
    if parts & _VIRAL:
        return "viral"
    if parts & _FUNGAL:
        return "fungal"
    if text == "pneumonia":
        return "other_pneumonia_unspecified"
    return "other"


def scan_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted, hidden files skipped)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def finish(df: pd.DataFrame, *, source: Path | None = None, attrs: dict | None = None) -> Manifest:
    """Give every importer's table the same shape: core columns first, then labels, masks, extras."""
    df = df.copy()
    for col in schema.CORE_COLUMNS:
        if col not in df.columns:
            df[col] = "unknown" if col == schema.VIEW else np.nan
    df[schema.PATIENT_ID] = df[schema.PATIENT_ID].astype(str)
    df[schema.IMAGE] = df[schema.IMAGE].map(lambda p: str(Path(p).resolve()) if isinstance(p, (str, Path)) else p)
    for col in [c for c in df.columns if c.startswith("mask_")]:
        df[col] = df[col].map(lambda p: str(Path(p).resolve()) if isinstance(p, (str, Path)) and str(p) else None)
    for col in (schema.AGE, schema.OFFSET_DAYS):
        values = pd.to_numeric(df[col], errors="coerce")
        lost = values.isna() & df[col].notna() & (df[col].astype(str).str.strip() != "")
        if lost.any() and f"{col}_raw" not in df.columns:  # keep what could not be read ('?', '65 y')
            df[f"{col}_raw"] = df[col].where(lost)
        df[col] = values
    labels = [c for c in _canonical_labels() if c in df.columns]
    masks = [c for c in schema.MASK_COLUMNS if c in df.columns] + sorted(
        c for c in df.columns if c.startswith("mask_") and c not in schema.MASK_COLUMNS)
    rest = [c for c in df.columns if c not in set(schema.CORE_COLUMNS) | set(labels) | set(masks)]
    df = df[schema.CORE_COLUMNS + labels + masks + rest].reset_index(drop=True)
    return Manifest(df, source=source, attrs=dict(attrs or {}))


def _canonical_labels() -> Iterable[str]:
    return [schema.FINDING, schema.WENT_ICU, schema.SURVIVAL_DAYS, schema.DEATH_EVENT, schema.OPACITY_RIGHT,
            schema.OPACITY_LEFT, schema.GEOGRAPHIC_EXTENT, schema.OPACITY_SCORE, *schema.BRIXIA_COLUMNS,
            schema.BRIXIA_GLOBAL]


def blank_contradictory_sex(df: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Upstream tables sometimes merge two people under one id (ieee8023 patient 380: two radiopaedia cases).

    The rows stay one patient (safer for patient-level splits); their sex becomes unknown, the raw value is
    kept in ``sex_raw`` and the fix is noted, so validation can hold every other manifest to the rule.
    """
    if schema.SEX not in df.columns:
        return df
    counts = df[df[schema.SEX].isin(schema.SEXES)].groupby(schema.PATIENT_ID)[schema.SEX].nunique()
    bad = sorted(counts[counts > 1].index)
    if bad:
        df = df.copy()
        rows = df[schema.PATIENT_ID].isin(bad)
        df["sex_raw"] = df[schema.SEX]
        df.loc[rows, schema.SEX] = None
        notes.append(f"sex set to unknown for {int(rows.sum())} rows of {len(bad)} patient(s) with contradictory "
                     f"sex: {', '.join(map(str, bad))}")
    return df
