"""COVID-19-NY-SBU (TCIA, Stony Brook University; Saltz et al. 2021): DICOM tree + clinical CSV.

Layout: ``<PatientID>/<study>/<series>/*.dcm`` (CR/DX radiographs next to CT/MR series, which are
skipped and counted) and the clinical table (``clinical=`` path, else the CSV in ``src`` that has the ICU
column). The clinical table is joined on the TCIA subject id (``to_patient_id`` in the published file; any
of ``id_column``/``to_patient_id``/``patient_id``/``PatientID`` found) and its ICU column ``is_icu``
(True/False) becomes ``went_icu``; ``last.status`` = deceased becomes ``death_event``. Patient ids are
stored as salted hashes only.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrlab.data import schema
from cxrlab.data.importers import register_importer
from cxrlab.data.importers._common import finish, normalise_sex, yes_no
from cxrlab.data.importers._dicom_tree import RAW_COLUMNS, scan_dicom_tree
from cxrlab.data.manifest import Manifest, read_table
from cxrlab.errors import InputError

ID_COLUMNS = ("to_patient_id", "patient_id", "PatientID", "subject_id")
SEX_COLUMNS = ("gender_concept_name", "sex", "gender")


def find_clinical(src: Path, icu_column: str) -> Path | None:
    for path in sorted(src.rglob("*.csv")):
        if icu_column in pd.read_csv(path, nrows=0).columns:
            return path
    return None


@register_importer("ny_sbu", description="COVID-19-NY-SBU: TCIA DICOM tree + clinical CSV (is_icu)")
def import_ny_sbu(src: Path, *, out: Path | None = None, clinical: str | Path | None = None,
                  id_column: str | None = None, icu_column: str = "is_icu",
                  source_dataset: str = "COVID-19-NY-SBU") -> Manifest:
    notes: list[str] = []
    df = scan_dicom_tree(src, "nysbu", notes)
    df[schema.FINDING] = "covid19"  # the collection holds COVID-19 positive patients
    clinical_path = Path(clinical) if clinical else find_clinical(src, icu_column)
    if clinical_path is None:
        notes.append(f"no clinical CSV with column {icu_column!r}: went_icu left empty")
        df[schema.WENT_ICU] = float("nan")
    else:
        df = _join_clinical(df, clinical_path, id_column, icu_column, notes)
    df[schema.SOURCE_DATASET] = source_dataset
    return finish(df.drop(columns=RAW_COLUMNS), source=src, attrs={"notes": notes})


def _join_clinical(df: pd.DataFrame, path: Path, id_column: str | None, icu_column: str,
                   notes: list[str]) -> pd.DataFrame:
    table = read_table(path)
    key = id_column or next((c for c in ID_COLUMNS if c in table.columns), None)
    if key is None or key not in table.columns:
        raise InputError(path, f"no patient id column (looked for {', '.join((id_column,) if id_column else ID_COLUMNS)})")
    if icu_column not in table.columns:
        raise InputError(path, "ICU column missing", field=icu_column)
    table = table.drop_duplicates(key).set_index(table[key].astype(str).str.strip())
    clinical = table.drop(columns=[key]).add_prefix("clinical_")
    df = df.join(clinical, on="_patient_raw")
    df[schema.WENT_ICU] = df.pop(f"clinical_{icu_column}").map(yes_no)
    sex_col = next((f"clinical_{c}" for c in SEX_COLUMNS if f"clinical_{c}" in df.columns), None)
    if sex_col is not None:
        df[schema.SEX] = df[schema.SEX].fillna(df[sex_col].map(normalise_sex))
    if "clinical_last.status" in df.columns:
        status = df["clinical_last.status"].astype(str).str.lower()
        df[schema.DEATH_EVENT] = status.map({"deceased": 1.0, "discharged": 0.0})
    matched = int(df[schema.WENT_ICU].notna().sum())
    notes.append(f"clinical table {path.name}: ICU label for {matched}/{len(df)} images")
    return df
