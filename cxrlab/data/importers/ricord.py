"""MIDRC-RICORD-1c (TCIA; RSNA International COVID-19 Open Radiology Database, chest radiographs of
COVID-19 positive adults): DICOM tree + study-level annotations.

Annotations: the MD.ai JSON export (``labelGroups[].labels[]`` give label ids and names,
``datasets[].annotations[]`` give ``StudyInstanceUID`` + ``labelId`` per reader) or a CSV with
``StudyInstanceUID`` and ``labelName``. Each study was read by several radiologists; per study the majority
label wins (ties go to the more severe grade), for two questions:

- ``ricord_appearance``: typical / indeterminate / atypical / negative ("Negative for Pneumonia");
- ``ricord_grade`` (airspace disease grading): negative / mild / moderate / severe.

Label fusion then maps ``ricord_grade`` to ICU (negative/mild/moderate -> 0, severe -> 1).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd

from cxrlab.data import schema
from cxrlab.data.importers import register_importer
from cxrlab.data.importers._common import finish
from cxrlab.data.importers._dicom_tree import RAW_COLUMNS, scan_dicom_tree
from cxrlab.data.manifest import Manifest
from cxrlab.errors import InputError

GRADES = ["negative", "mild", "moderate", "severe"]
APPEARANCES = ["negative", "atypical", "indeterminate", "typical"]


def classify_label(name: str) -> tuple[str, str] | None:
    """``('grade'|'appearance', value)`` for a RICORD label name, None for other labels."""
    text = name.strip().lower()
    if "negative for pneumonia" in text:
        return "negative", "negative"  # answers both questions
    for grade in ("mild", "moderate", "severe"):
        if text.startswith(grade):
            return "grade", grade
    for appearance in ("typical", "indeterminate", "atypical"):
        if text.startswith(appearance):
            return "appearance", appearance
    return None


def read_annotations(path: Path) -> pd.DataFrame:
    """Long table ``StudyInstanceUID, labelName`` (one row per reader's label)."""
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            names = {lab["id"]: lab["name"] for group in data.get("labelGroups", []) for lab in group.get("labels", [])}
            rows = [{"StudyInstanceUID": a.get("StudyInstanceUID"), "labelName": names.get(a.get("labelId"))}
                    for ds in data.get("datasets", []) for a in ds.get("annotations", [])]
            return pd.DataFrame(rows, columns=["StudyInstanceUID", "labelName"]).dropna()
        table = pd.read_csv(path)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(path, f"cannot read RICORD annotations: {exc}") from exc
    missing = {"StudyInstanceUID", "labelName"} - set(table.columns)
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(sorted(missing))}")
    return table[["StudyInstanceUID", "labelName"]].dropna()


def study_labels(long: pd.DataFrame) -> pd.DataFrame:
    """Majority vote per study (ties -> the more severe grade / the more typical appearance)."""
    out = []
    for study, names in long.groupby("StudyInstanceUID")["labelName"]:
        grades, appearances = Counter(), Counter()
        for name in names:
            kind = classify_label(str(name))
            if kind is None:
                continue
            if kind[0] in {"grade", "negative"}:
                grades[kind[1]] += 1
            if kind[0] in {"appearance", "negative"}:
                appearances[kind[1]] += 1
        out.append({"_study_uid_raw": str(study),
                    "ricord_grade": _vote(grades, GRADES), "ricord_appearance": _vote(appearances, APPEARANCES),
                    "ricord_grade_votes": ";".join(f"{k}:{v}" for k, v in sorted(grades.items())) or None})
    return pd.DataFrame(out, columns=["_study_uid_raw", "ricord_grade", "ricord_appearance", "ricord_grade_votes"])


def _vote(counts: Counter, order: list[str]) -> str | None:
    if not counts:
        return None
    return max(counts, key=lambda k: (counts[k], order.index(k)))


@register_importer("ricord", description="MIDRC-RICORD-1c: DICOM tree + airspace disease grading annotations")
def import_ricord(src: Path, *, out: Path | None = None, annotations: str | Path | None = None,
                  source_dataset: str = "MIDRC-RICORD-1c") -> Manifest:
    notes: list[str] = []
    df = scan_dicom_tree(src, "ricord", notes)
    df[schema.FINDING] = "covid19"  # RICORD-1c: COVID-19 positive patients
    path = Path(annotations) if annotations else next(
        (p for p in sorted(src.rglob("*")) if p.suffix.lower() in {".json", ".csv"}), None)
    if path is None:
        raise InputError(src, "no RICORD annotation file (.json MD.ai export or .csv); pass annotations=PATH")
    labels = study_labels(read_annotations(path))
    df = df.merge(labels, how="left", on="_study_uid_raw")
    notes.append(f"annotations {path.name}: grade for {int(df['ricord_grade'].notna().sum())}/{len(df)} images")
    df[schema.SOURCE_DATASET] = source_dataset
    return finish(df.drop(columns=RAW_COLUMNS), source=src, attrs={"notes": notes})
