"""Kermany chest-xray-pneumonia: ``{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg``.

Bacterial / viral from the file name (``person1_bacteria_1.jpeg``, ``person1_virus_6.jpeg``); the patient
from ``personNNN`` (pneumonia) or ``IM-NNNN`` / ``NORMAL2-IM-NNNN`` (normal). Person numbers are shared by
the bacteria and virus files by default (one patient); ``person_includes_type=True`` keeps them apart (the
reading the shared copy's README takes). Grouping them is the choice that can never leak a patient.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from cxrlab.data import schema
from cxrlab.data.importers import register_importer
from cxrlab.data.importers._common import finish, scan_images
from cxrlab.data.manifest import Manifest
from cxrlab.errors import InputError

SPLITS = {"train", "test", "val"}
CLASSES = {"NORMAL", "PNEUMONIA"}
_PERSON = re.compile(r"(person\d+)_(bacteria|virus)", re.IGNORECASE)
_NORMAL = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)", re.IGNORECASE)


def parse_name(name: str, klass: str, person_includes_type: bool = False) -> tuple[str, str]:
    """``(patient key, finding)`` from a Kermany file name."""
    person = _PERSON.search(name)
    if person:
        kind = person.group(2).lower()
        key = f"{person.group(1).lower()}_{kind}" if person_includes_type else person.group(1).lower()
        return key, "bacterial" if kind == "bacteria" else "viral"
    normal = _NORMAL.match(name)
    key = normal.group(1) if normal else Path(name).stem
    return key, "normal" if klass == "NORMAL" else "pneumonia"


@register_importer("kermany", description="Kermany chest-xray-pneumonia (train|test/NORMAL|PNEUMONIA)")
def import_kermany(src: Path, *, out: Path | None = None, person_includes_type: bool = False,
                   source_dataset: str = "kermany/chest-xray-pneumonia") -> Manifest:
    rows = []
    for path in scan_images(src):
        klass, split = path.parent.name.upper(), path.parent.parent.name.lower()
        if klass not in CLASSES or split not in SPLITS:
            continue
        key, finding = parse_name(path.name, klass, person_includes_type)
        rows.append({schema.IMAGE: str(path), schema.PATIENT_ID: f"kermany_{key}", schema.VIEW: "unknown",
                     schema.SOURCE_DATASET: source_dataset, schema.FINDING: finding,
                     "pneumonia": int(klass == "PNEUMONIA"), "original_split": split,
                     "original_filename": path.name, "age_group": "pediatric (1-5 y)"})
    if not rows:
        raise InputError(src, "no images found in {train,test,val}/{NORMAL,PNEUMONIA}/ (Kermany layout)")
    return finish(pd.DataFrame(rows), source=src)
