"""The cxrlab manifest folder (``manifest.csv`` + images + masks): the shared data and the phantom.

Native column names are mapped onto the canonical schema; everything else is kept as an extra column:

- ``mask_v7_lungs/right_lung/left_lung`` -> ``mask_lungs/right_lung/left_lung`` (manual V7 masks, ieee8023);
  ``mask_infection`` -> ``mask_disease`` (COVID-QU-Ex / QaTa-COV19);
- ``finding_coarse`` -> ``finding`` (``viral_other`` -> ``viral``), the native ``finding`` -> ``finding_detail``;
- ``went_icu`` Y/N -> 1/0 (raw text kept in ``went_icu_raw``), ``survival`` Y/N -> ``death_event`` 0/1;
- ``cohen_geographic_extent_mean``/``cohen_opacity_mean`` -> ``geographic_extent``/``opacity_score``;
- ``brixia_senior_{A..F,global}`` kept and exposed as ``brixia_{A..F}``/``brixia_global``;
- patients with contradictory sex get sex unknown (raw kept in ``sex_raw``, noted in ``attrs['notes']``);
- ``view`` normalised to PA / AP / AP Supine / L / unknown (raw text kept in ``view_raw``); ``sex`` to M / F.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrlab.data import schema
from cxrlab.data.importers import register_importer
from cxrlab.data.importers._common import blank_contradictory_sex, finish, normalise_sex, normalise_view, yes_no
from cxrlab.data.manifest import Manifest, load_manifest

MASK_RENAMES = {
    "mask_v7_lungs": schema.MASK_LUNGS,
    "mask_v7_right_lung": schema.MASK_RIGHT_LUNG,
    "mask_v7_left_lung": schema.MASK_LEFT_LUNG,
    "mask_infection": schema.MASK_DISEASE,
}
LABEL_RENAMES = {
    "cohen_geographic_extent_mean": schema.GEOGRAPHIC_EXTENT,
    "cohen_opacity_mean": schema.OPACITY_SCORE,
}
FINDING_ALIASES = {"viral_other": "viral"}


def canonicalise(df: pd.DataFrame) -> pd.DataFrame:
    """Map a cxrlab-format table's native columns onto the canonical ones (idempotent)."""
    df = df.copy()
    for native, canonical in {**MASK_RENAMES, **LABEL_RENAMES}.items():
        if native in df.columns and canonical not in df.columns:
            df = df.rename(columns={native: canonical})
    if "finding_coarse" in df.columns:
        if schema.FINDING in df.columns:
            df = df.rename(columns={schema.FINDING: "finding_detail"})
        df[schema.FINDING] = df.pop("finding_coarse").replace(FINDING_ALIASES)
    for zone in [*schema.BRIXIA_ZONES, "global"]:
        senior, canonical = f"brixia_senior_{zone}", f"brixia_{zone}"
        if senior in df.columns and canonical not in df.columns:
            df[canonical] = df[senior]
    if schema.WENT_ICU in df.columns and not pd.api.types.is_numeric_dtype(df[schema.WENT_ICU]):
        df["went_icu_raw"] = df[schema.WENT_ICU]
        df[schema.WENT_ICU] = df[schema.WENT_ICU].map(yes_no)
    if "survival" in df.columns and schema.DEATH_EVENT not in df.columns:
        df[schema.DEATH_EVENT] = 1.0 - df["survival"].map(yes_no)  # survival N = died
    if schema.VIEW in df.columns:
        views = df[schema.VIEW].map(normalise_view)
        if (views.astype(str).to_numpy() != df[schema.VIEW].astype(str).to_numpy()).any():
            df["view_raw"] = df[schema.VIEW]
        df[schema.VIEW] = views
    if schema.SEX in df.columns:
        df[schema.SEX] = df[schema.SEX].map(normalise_sex)
    if schema.AGE in df.columns and not pd.api.types.is_numeric_dtype(df[schema.AGE]):
        df["age_raw"] = df[schema.AGE]
        df[schema.AGE] = pd.to_numeric(df[schema.AGE], errors="coerce")
    return df


@register_importer("cxrlab", description="cxrlab manifest folder (manifest.csv/.parquet + images + masks)")
def import_cxrlab(src: Path, *, out: Path | None = None, source_dataset: str | None = None) -> Manifest:
    manifest = load_manifest(src)
    df = canonicalise(manifest.df)
    if source_dataset:
        df[schema.SOURCE_DATASET] = source_dataset
    df[schema.SOURCE_DATASET] = df[schema.SOURCE_DATASET].fillna(Path(src).name)
    notes: list[str] = []
    df = blank_contradictory_sex(df, notes)
    return finish(df, source=manifest.source, attrs={"notes": notes})
