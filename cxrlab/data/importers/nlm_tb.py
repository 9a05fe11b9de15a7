"""NLM tuberculosis sets: Montgomery County (manual left/right lung masks) and Shenzhen (lung masks).

Montgomery: ``CXR_png/MCUCXR_0001_0.png``, ``ManualMask/{leftMask,rightMask}/<same name>``,
``ClinicalReadings/<stem>.txt`` ("Patient's Sex: M", "Patient's Age: 035Y", reading). The last digit is
the label (1 = tuberculosis). Each lung mask is assigned to the patient's side by its centroid (a mask on the
image-left half is the patient's RIGHT lung in a PA view), so the convention of the mask folder names does
not matter.
Shenzhen: ``CXR_png/CHNCXR_0001_0.png``, ``ClinicalReadings/<stem>.txt`` ("male 45yrs" then the
reading) and the community lung masks ``mask/CHNCXR_0001_0_mask.png`` -> ``mask_lungs``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.data.importers import register_importer
from cxrlab.data.importers._common import finish, normalise_sex, scan_images
from cxrlab.data.manifest import Manifest
from cxrlab.errors import InputError
from cxrlab.io import read_mask

_MONTGOMERY = re.compile(r"^(MCUCXR_\d{4})_([01])$", re.IGNORECASE)
_SHENZHEN = re.compile(r"^(CHNCXR_\d{4})_([01])$", re.IGNORECASE)


def _readings(src: Path) -> dict[str, Path]:
    return {p.stem.upper(): p for p in src.rglob("*.txt") if p.parent.name.lower() == "clinicalreadings"}


def parse_montgomery_reading(text: str) -> dict:
    sex = re.search(r"Sex:\s*([A-Za-z]+)", text)
    age = re.search(r"Age:\s*(\d+)\s*([YMD]?)", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and ":" not in ln]
    return {schema.SEX: normalise_sex(sex.group(1)) if sex else None,
            schema.AGE: _age(age) if age else np.nan, "reading": " ".join(lines) or None}


def parse_shenzhen_reading(text: str) -> dict:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0].lower() if lines else ""
    sex = re.search(r"\b(male|female)\b", first)
    age = re.search(r"(\d+)\s*(yrs?|y|months?|m|days?|d)?", first)
    return {schema.SEX: normalise_sex(sex.group(1)) if sex else None,
            schema.AGE: _age(age) if age else np.nan, "reading": " ".join(lines[1:]) or None}


def _age(match: re.Match) -> float:
    unit = (match.group(2) or "y")[0].lower()
    return round(int(match.group(1)) / {"y": 1, "m": 12, "d": 365.25}[unit], 3)


def _side_by_centroid(mask_path: Path) -> str:
    mask = read_mask(mask_path)
    xs = np.nonzero(mask)[1]
    if xs.size == 0:
        raise InputError(mask_path, "empty lung mask: cannot tell which lung it is")
    return schema.MASK_RIGHT_LUNG if xs.mean() < mask.shape[1] / 2 else schema.MASK_LEFT_LUNG


@register_importer("montgomery", description="NLM Montgomery County TB set with manual left/right lung masks")
def import_montgomery(src: Path, *, out: Path | None = None,
                      source_dataset: str = "NLM Montgomery County") -> Manifest:
    readings = _readings(src)
    mask_files = {(p.parent.name.lower(), p.name.upper()): p for p in scan_images(src)
                  if p.parent.parent.name.lower() == "manualmask"}
    rows = []
    for image in scan_images(src):
        match = _MONTGOMERY.match(image.stem)
        if not match or "mask" in str(image.relative_to(src)).lower():
            continue
        row = {schema.IMAGE: str(image), schema.PATIENT_ID: f"montgomery_{match.group(1).upper()}",
               schema.VIEW: "PA", schema.SOURCE_DATASET: source_dataset,
               schema.FINDING: "tuberculosis" if match.group(2) == "1" else "normal"}
        if image.stem.upper() in readings:
            row.update(parse_montgomery_reading(readings[image.stem.upper()].read_text(errors="replace")))
        for folder in ("leftmask", "rightmask"):
            if (mask := mask_files.get((folder, image.name.upper()))) is not None:
                side = _side_by_centroid(mask)
                if side in row:
                    raise InputError(mask, f"both lung masks of {image.name} lie on the same side of the image")
                row[side] = str(mask)
        rows.append(row)
    if not rows:
        raise InputError(src, "no Montgomery images (MCUCXR_nnnn_[01].png) found")
    return finish(pd.DataFrame(rows), source=src)


@register_importer("shenzhen", description="NLM Shenzhen TB set (+ community lung masks when present)")
def import_shenzhen(src: Path, *, out: Path | None = None, source_dataset: str = "NLM Shenzhen") -> Manifest:
    masks = {re.sub(r"_mask$", "", p.stem).upper(): p for p in scan_images(src)
             if "mask" in str(p.relative_to(src)).lower()}
    readings = _readings(src)
    rows = []
    for image in scan_images(src):
        match = _SHENZHEN.match(image.stem)
        if not match or "mask" in str(image.relative_to(src)).lower():
            continue
        row = {schema.IMAGE: str(image), schema.PATIENT_ID: f"shenzhen_{match.group(1).upper()}",
               schema.VIEW: "PA", schema.SOURCE_DATASET: source_dataset,
               schema.FINDING: "tuberculosis" if match.group(2) == "1" else "normal"}
        if image.stem.upper() in readings:
            row.update(parse_shenzhen_reading(readings[image.stem.upper()].read_text(errors="replace")))
        if image.stem.upper() in masks:
            row[schema.MASK_LUNGS] = str(masks[image.stem.upper()])
        rows.append(row)
    if not rows:
        raise InputError(src, "no Shenzhen images (CHNCXR_nnnn_[01].png) found")
    return finish(pd.DataFrame(rows), source=src)
