"""The fusion source of the ICU study on the shared data: ieee8023 films with a Cohen geographic-extent score
(0–8, both lungs 0–4 each) whose patients have no ICU label, labelled ``went_icu = extent >= threshold`` and
marked train-only (they train, never validate or test)."""

from __future__ import annotations

import pandas as pd

from cxrlab.data import schema
from cxrlab.errors import InputError

EXTENT = "geographic_extent"
DEFAULT_THRESHOLD = 5.0  # > half of both lungs involved: the "severe" end of the Cohen score (stated in the doc)


def severity_fusion(df: pd.DataFrame, target: str = "went_icu", column: str = EXTENT,
                    threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """Rows with a numeric ``column`` of patients without any ``target`` label, ``target`` set to 0/1 by
    ``threshold`` (score >= threshold → 1) and ``train_only`` = 1. Patients with an ICU label never appear."""
    for name in (column, target, schema.PATIENT_ID):
        if name not in df.columns:
            raise InputError("manifest", "column needed for severity fusion is missing", field=name)
    score = pd.to_numeric(df[column], errors="coerce")
    labelled = pd.to_numeric(df[target], errors="coerce").notna()
    icu_patients = set(df.loc[labelled, schema.PATIENT_ID].astype(str))
    keep = score.notna() & ~df[schema.PATIENT_ID].astype(str).isin(icu_patients)
    out = df[keep].copy()
    out[target] = (score[keep] >= threshold).astype(int)
    out["train_only"] = 1
    return out.reset_index(drop=True)
