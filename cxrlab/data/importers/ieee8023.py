"""ieee8023 covid-chestxray-dataset as published upstream: ``metadata.csv``, ``images/``, ``annotations/``.

Joins, by file name, the Cohen severity scores (``annotations/covid-severity-scores.csv``: geographic extent
0-8 and opacity 0-6, mean of 3 raters) and, when present, a BrixIA annotation file (any CSV in
``annotations/`` with ``S-Global``: senior ``S-*`` and junior ``J-*`` zone scores). Rows whose file is not
an image (CT volumes in ``volumes/``) are skipped and counted; CT slices stored as images are kept with
their ``modality`` so the exclusion step can drop them with a reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.data.importers import register_importer
from cxrlab.data.importers._common import (IMAGE_SUFFIXES, blank_contradictory_sex, coarse_finding, finish,
                                           normalise_sex, normalise_view, yes_no)
from cxrlab.data.manifest import Manifest, read_table
from cxrlab.errors import InputError

YES_NO_COLUMNS = ["RT_PCR_positive", "survival", "intubated", "intubation_present", "went_icu", "in_icu",
                  "needed_supplemental_O2", "extubated"]
SEVERITY_FILE = "covid-severity-scores.csv"


@register_importer("ieee8023", description="ieee8023 covid-chestxray-dataset upstream layout")
def import_ieee8023(src: Path, *, out: Path | None = None, source_dataset: str = "ieee8023/covid-chestxray-dataset"
                    ) -> Manifest:
    meta_path = src / "metadata.csv"
    if not meta_path.is_file():
        raise InputError(src, "no metadata.csv (expected the ieee8023 covid-chestxray-dataset layout)")
    meta = read_table(meta_path)
    for col in ("patientid", "filename"):
        if col not in meta.columns:
            raise InputError(meta_path, "required column missing", field=col)
    folders = meta["folder"].fillna("images").astype(str) if "folder" in meta.columns else \
        pd.Series("images", index=meta.index)
    paths = [src / f / str(n) for f, n in zip(folders, meta["filename"])]
    is_image = np.array([p.suffix.lower() in IMAGE_SUFFIXES for p in paths])
    notes = [f"skipped {int((~is_image).sum())} rows whose file is not an image (CT volumes)"] if (~is_image).any() \
        else []
    meta, paths = meta[is_image].reset_index(drop=True), [p for p, ok in zip(paths, is_image) if ok]

    def column(name: str) -> pd.Series:
        return meta[name] if name in meta.columns else pd.Series(np.nan, index=meta.index, dtype=object)

    df = pd.DataFrame({
        schema.IMAGE: [str(p) for p in paths],
        schema.PATIENT_ID: "ieee8023_" + meta["patientid"].astype(str),
        schema.OFFSET_DAYS: pd.to_numeric(column("offset"), errors="coerce"),
        schema.VIEW: column("view").map(normalise_view),
        schema.SEX: column("sex").map(normalise_sex),
        schema.AGE: pd.to_numeric(column("age"), errors="coerce"),
        schema.SOURCE_DATASET: source_dataset,
        schema.FINDING: column("finding").map(coarse_finding),
    })
    df["finding_detail"] = column("finding")
    df["view_raw"] = column("view")
    for col in YES_NO_COLUMNS:
        if col in meta.columns:
            df[col if col != "went_icu" else "went_icu_raw"] = meta[col]
    if "went_icu" in meta.columns:
        df[schema.WENT_ICU] = meta["went_icu"].map(yes_no)
    if "survival" in meta.columns:
        df[schema.DEATH_EVENT] = 1.0 - meta["survival"].map(yes_no)
    keep = [c for c in meta.columns if c not in {"patientid", "offset", "sex", "age", "finding", "view", "folder",
                                                  "filename", *YES_NO_COLUMNS} and not c.startswith("Unnamed")]
    for col in keep:
        df[col] = meta[col].to_numpy()
    df["original_filename"] = meta["filename"].to_numpy()

    annotations = src / "annotations"
    df = _join_cohen(df, annotations / SEVERITY_FILE, notes)
    df = _join_brixia(df, annotations, notes)
    df = blank_contradictory_sex(df, notes)
    return finish(df, source=meta_path, attrs={"notes": notes})


def _join_cohen(df: pd.DataFrame, path: Path, notes: list[str]) -> pd.DataFrame:
    if not path.is_file():
        return df
    try:
        scores = pd.read_csv(path, comment="#")
    except Exception as exc:
        raise InputError(path, f"cannot read severity scores: {exc}") from exc
    missing = {"filename", "geographic_mean", "opacity_mean"} - set(scores.columns)
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(sorted(missing))}")
    scores = scores.rename(columns={"geographic_mean": schema.GEOGRAPHIC_EXTENT, "opacity_mean": schema.OPACITY_SCORE})
    out = df.merge(scores[["filename", schema.GEOGRAPHIC_EXTENT, schema.OPACITY_SCORE]].drop_duplicates("filename"),
                   how="left", left_on="original_filename", right_on="filename").drop(columns="filename")
    notes.append(f"Cohen severity scores joined for {int(out[schema.GEOGRAPHIC_EXTENT].notna().sum())} images")
    return out


def _join_brixia(df: pd.DataFrame, annotations: Path, notes: list[str]) -> pd.DataFrame:
    if not annotations.is_dir():
        return df
    for path in sorted(annotations.glob("*.csv")):
        table = pd.read_csv(path, encoding="utf-8-sig", nrows=0)
        if "S-Global" not in table.columns or "filename" not in table.columns:
            continue
        table = pd.read_csv(path, encoding="utf-8-sig")
        renames = {}
        for zone in [*schema.BRIXIA_ZONES, "Global"]:
            renames[f"S-{zone}"] = f"brixia_senior_{zone.lower() if zone == 'Global' else zone}"
            renames[f"J-{zone}"] = f"brixia_junior_{zone.lower() if zone == 'Global' else zone}"
        table = table.rename(columns=renames)
        table = table[["filename", *[c for c in renames.values() if c in table.columns]]]
        table = table.drop_duplicates("filename")
        df = df.merge(table, how="left", left_on="original_filename", right_on="filename").drop(columns="filename")
        for zone in schema.BRIXIA_ZONES:
            df[f"brixia_{zone}"] = df[f"brixia_senior_{zone}"]
        df[schema.BRIXIA_GLOBAL] = df["brixia_senior_global"]
        notes.append(f"BrixIA scores from {path.name} joined for {int(df[schema.BRIXIA_GLOBAL].notna().sum())} images")
        break
    return df
