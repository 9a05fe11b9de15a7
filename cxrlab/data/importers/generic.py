"""Generic importers: ``folder`` (one sub-folder per class) and ``csv`` (a table with a column mapping)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from cxrlab.data import schema
from cxrlab.data.importers import register_importer
from cxrlab.data.importers._common import finish, normalise_sex, normalise_view, scan_images
from cxrlab.data.manifest import Manifest, read_table
from cxrlab.errors import ConfigError, InputError


@register_importer("folder", description="one sub-folder per class; the label goes to --opt label=finding")
def import_folder(src: Path, *, out: Path | None = None, label: str = schema.FINDING,
                  patient_regex: str | None = None, source_dataset: str | None = None) -> Manifest:
    """``src/<class>/**/<image>``: the class name (lower-cased) becomes column ``label``.

    Patients: the first group of ``patient_regex`` matched on the file name, else one patient per image
    (``patient_is_image`` = 1, so a later reader knows the split cannot group follow-ups).
    """
    pattern = re.compile(patient_regex) if patient_regex else None
    rows = []
    for class_dir in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for image in scan_images(class_dir):
            match = pattern.search(image.name) if pattern else None
            if pattern and not match:
                raise InputError(image, f"file name does not match patient_regex {patient_regex!r}")
            patient = match.group(1) if match else image.relative_to(src).with_suffix("").as_posix()
            rows.append({schema.IMAGE: str(image), schema.PATIENT_ID: f"{src.name}_{patient}",
                         schema.VIEW: "unknown", schema.SOURCE_DATASET: source_dataset or src.name,
                         label: class_dir.name.lower(), "patient_is_image": int(match is None)})
    if not rows:
        raise InputError(src, "no class sub-folders with images found")
    return finish(pd.DataFrame(rows), source=src)


def parse_mapping(columns: str | dict | None) -> dict[str, str]:
    """``"image=path,patient_id=pid"`` or a dict -> ``{canonical: native}``."""
    if columns is None:
        return {}
    if isinstance(columns, dict):
        return {str(k): str(v) for k, v in columns.items()}
    mapping = {}
    for item in filter(None, (part.strip() for part in columns.split(","))):
        if "=" not in item:
            raise ConfigError(f"column mapping item {item!r} must look like canonical=native")
        key, value = item.split("=", 1)
        mapping[key.strip()] = value.strip()
    return mapping


@register_importer("csv", description="a CSV/Parquet table; --opt columns=image=path,patient_id=pid,...")
def import_csv(src: Path, *, out: Path | None = None, columns: str | dict | None = None,
               image_root: str | Path | None = None, source_dataset: str | None = None) -> Manifest:
    """Rename native columns to canonical ones; image/mask paths are relative to ``image_root`` (default: the
    table's folder). Unmapped columns are kept as extras."""
    table = read_table(src)
    mapping = parse_mapping(columns)
    missing = [native for native in mapping.values() if native not in table.columns]
    if missing:
        raise InputError(src, f"mapped column(s) not in the table: {', '.join(missing)}")
    df = table.rename(columns={native: canonical for canonical, native in mapping.items()})
    for col in (schema.IMAGE, schema.PATIENT_ID):
        if col not in df.columns:
            raise InputError(src, f"no {col!r} column: map one with columns={col}=<native column>", field=col)
    root = Path(image_root) if image_root else src.parent
    for col in [schema.IMAGE, *[c for c in df.columns if c.startswith("mask_")]]:
        df[col] = df[col].map(lambda p: str(root / str(p)) if isinstance(p, str) and p.strip() else None)
    if schema.VIEW in df.columns:
        df["view_raw"] = df[schema.VIEW]
        df[schema.VIEW] = df[schema.VIEW].map(normalise_view)
    if schema.SEX in df.columns:
        df[schema.SEX] = df[schema.SEX].map(normalise_sex)
    if schema.SOURCE_DATASET not in df.columns or source_dataset:
        df[schema.SOURCE_DATASET] = source_dataset or src.stem
    return finish(df, source=src)
