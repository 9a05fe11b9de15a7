"""Scan a TCIA-style DICOM tree (``<patient>/<study>/<series>/*.dcm``) reading headers only."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm import tqdm

from cxrlab.data import schema
from cxrlab.data.importers._common import normalise_sex, normalise_view
from cxrlab.errors import InputError
from cxrlab.io import RADIOGRAPH_MODALITIES, read_dicom_header
from cxrlab.io.dicom import header_from_dataset

# Raw identifiers live only in these columns, only inside the importer, to join clinical/annotation tables.
RAW_COLUMNS = ["_patient_raw", "_study_uid_raw"]


def dicom_files(src: Path) -> list[Path]:
    """Files with the DICM preamble (TCIA names them ``1-1.dcm``; some trees have no suffix)."""
    files = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        if path.suffix.lower() in {".dcm", ".dicom"}:
            files.append(path)
        elif path.suffix == "":
            with open(path, "rb") as fh:
                if fh.read(132)[128:132] == b"DICM":
                    files.append(path)
    return files


def scan_dicom_tree(src: Path, prefix: str, notes: list[str]) -> pd.DataFrame:
    """One row per radiograph file; non-radiograph files (CT, MR, ...) are skipped and counted in ``notes``."""
    rows, skipped = [], {}
    for path in tqdm(dicom_files(src), desc=f"reading DICOM headers ({prefix})", unit="file", leave=False):
        ds = read_dicom_header(path)
        header = header_from_dataset(ds)
        modality = header.modality or ""
        if modality not in RADIOGRAPH_MODALITIES:
            skipped[modality or "?"] = skipped.get(modality or "?", 0) + 1
            continue
        patient_raw = str(ds.get("PatientID", "") or "").strip()
        if not patient_raw:
            raise InputError(path, "DICOM file has no PatientID: cannot group images by patient", field="PatientID")
        rows.append({
            schema.IMAGE: str(path),
            schema.PATIENT_ID: f"{prefix}_{header.patient_hash}",
            schema.STUDY_ID: header.study_hash,
            schema.VIEW: normalise_view(header.view_position),
            schema.SEX: normalise_sex(header.sex),
            schema.AGE: header.age,
            "modality": modality,
            "accession": header.accession_hash,
            "study_date": header.study_date,
            "photometric": header.photometric,
            "view_raw": header.view_position,
            "series_description": str(ds.get("SeriesDescription", "") or "") or None,
            "conversion_type": str(ds.get("ConversionType", "") or "") or None,
            "_patient_raw": patient_raw,
            "_study_uid_raw": str(ds.get("StudyInstanceUID", "") or ""),
        })
    if skipped:
        notes.append("skipped non-radiograph files: " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())))
    if not rows:
        raise InputError(src, "no DICOM radiographs (CR/DX) found in the tree")
    df = pd.DataFrame(rows)
    df[schema.OFFSET_DAYS] = _offset_days(df)
    return df


def _offset_days(df: pd.DataFrame) -> pd.Series:
    """Days since the patient's first study (TCIA shifts dates per patient, so differences stay valid)."""
    dates = pd.to_datetime(df["study_date"], format="%Y%m%d", errors="coerce")
    first = dates.groupby(df[schema.PATIENT_ID]).transform("min")
    return (dates - first).dt.days
