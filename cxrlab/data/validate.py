"""Manifest validation: report EVERY bad row (file, column, reason), never stop at the first.

Checks: required values, image files exist, views in the vocabulary, sex M/F, plausible age and offsets,
label ranges (0/1 outcomes, Cohen 0-8 / 0-6, Brixia 0-3 / 0-18, opacity grades 0-3), duplicate images,
patients with contradictory sex (and, as a warning, ages that drift more than their follow-up allows), mask
files exist and have their image's size (read from the PNG header
only, so 10,000 masks take about a second).

With ``check_content=True`` (``cxrlab data validate --content``) every image is decoded and its pixels hashed:
the same film under two paths (a copy, a re-saved PNG, the same DICOM pixels) is an error when the rows belong to
different patients (one film on both sides of a patient-level split is test-set leakage) and a warning within
one patient. It reads every image, so it is off by default.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.data.manifest import Manifest
from cxrlab.errors import InputError
from cxrlab.io import image_size

ERROR, WARNING = "error", "warning"

# (column, low, high, integer?) for label ranges.
LABEL_RANGES = {
    schema.WENT_ICU: (0, 1, True),
    schema.DEATH_EVENT: (0, 1, True),
    schema.SURVIVAL_DAYS: (0, 36500, False),
    schema.OPACITY_RIGHT: (0, 3, True),
    schema.OPACITY_LEFT: (0, 3, True),
    schema.GEOGRAPHIC_EXTENT: (0, 8, False),
    schema.OPACITY_SCORE: (0, 6, False),
    **{col: (0, 3, True) for col in schema.BRIXIA_COLUMNS},
    schema.BRIXIA_GLOBAL: (0, 18, True),
}


@dataclass(frozen=True)
class ValidationIssue:
    row: int          # position in Manifest.df
    image: str
    column: str
    reason: str
    severity: str = ERROR

    def __str__(self) -> str:
        return f"{self.image} [row {self.row}, {self.column}] {self.severity}: {self.reason}"


def validate_manifest(manifest: Manifest, *, check_files: bool = True, check_masks: bool = True,
                      check_content: bool = False,
                      progress: Callable[[int], None] | None = None) -> list[ValidationIssue]:
    """All issues of the manifest (errors and warnings), in row order. An empty list means valid.
    ``check_content``: also decode every image and report the same pixels under two rows (module doc)."""
    df = manifest.df
    issues: list[ValidationIssue] = []
    if df.empty:
        issues.append(ValidationIssue(-1, "<manifest>", schema.IMAGE, "manifest has no rows"))
    images = df[schema.IMAGE].astype(object) if schema.IMAGE in df else pd.Series([None] * len(df))
    names = [str(p) if _present(p) else f"<row {i}>" for i, p in enumerate(images)]
    for check in (_required, _views, _sex, _ages, _offsets, _labels, _duplicates, _contradictory_sex,
                  _contradictory_age):
        issues.extend(check(df, names))
    if check_files:
        issues.extend(_files(df, names, check_masks=check_masks, progress=progress))
    if check_content:
        issues.extend(_same_pixels(df, names, progress=progress))
    return sorted(issues, key=lambda i: (i.row, i.column))


def issues_frame(issues: list[ValidationIssue]) -> pd.DataFrame:
    return pd.DataFrame([asdict(i) for i in issues], columns=["row", "image", "column", "reason", "severity"])


def errors(issues: list[ValidationIssue]) -> list[ValidationIssue]:
    return [i for i in issues if i.severity == ERROR]


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and str(value).strip() != ""


def _required(df: pd.DataFrame, names: list[str]) -> Iterator[ValidationIssue]:
    for col in schema.REQUIRED_COLUMNS:
        if col not in df.columns:
            yield ValidationIssue(-1, "<manifest>", col, "required column missing")
            continue
        for i in np.flatnonzero(~df[col].map(_present).to_numpy(bool)):
            yield ValidationIssue(int(i), names[i], col, "required value is empty")


def _views(df: pd.DataFrame, names: list[str]) -> Iterator[ValidationIssue]:
    if schema.VIEW not in df.columns:
        return
    for i, value in enumerate(df[schema.VIEW]):
        if value not in schema.VIEWS:
            yield ValidationIssue(i, names[i], schema.VIEW,
                                  f"unknown view {value!r} (expected one of {', '.join(schema.VIEWS)})")


def _sex(df: pd.DataFrame, names: list[str]) -> Iterator[ValidationIssue]:
    if schema.SEX not in df.columns:
        return
    for i, value in enumerate(df[schema.SEX]):
        if _present(value) and value not in schema.SEXES:
            yield ValidationIssue(i, names[i], schema.SEX, f"unknown sex {value!r} (expected M, F or empty)")


def _numeric(df: pd.DataFrame, col: str, names: list[str]) -> tuple[pd.Series, list[ValidationIssue]]:
    raw = df[col]
    values = pd.to_numeric(raw, errors="coerce")
    bad = [ValidationIssue(int(i), names[i], col, f"not a number: {raw.iloc[i]!r}")
           for i in np.flatnonzero((values.isna() & raw.map(_present)).to_numpy(bool))]
    return values, bad


def _ages(df: pd.DataFrame, names: list[str]) -> Iterator[ValidationIssue]:
    if schema.AGE not in df.columns:
        return
    values, bad = _numeric(df, schema.AGE, names)
    yield from bad
    for i in np.flatnonzero(((values < 0) | (values > 120)).to_numpy(bool)):
        yield ValidationIssue(int(i), names[i], schema.AGE, f"implausible age {values.iloc[i]} (expected 0-120 years)")


def _offsets(df: pd.DataFrame, names: list[str]) -> Iterator[ValidationIssue]:
    if schema.OFFSET_DAYS in df.columns:
        yield from _numeric(df, schema.OFFSET_DAYS, names)[1]


def _labels(df: pd.DataFrame, names: list[str]) -> Iterator[ValidationIssue]:
    for col, (low, high, integer) in LABEL_RANGES.items():
        if col not in df.columns:
            continue
        values, bad = _numeric(df, col, names)
        yield from bad
        outside = (values < low) | (values > high)
        if integer:
            outside |= values.notna() & (values != values.round())
        for i in np.flatnonzero(outside.to_numpy(bool)):
            kind = "integer " if integer else ""
            yield ValidationIssue(int(i), names[i], col, f"value {values.iloc[i]} outside {kind}range {low}-{high}")


def _duplicates(df: pd.DataFrame, names: list[str]) -> Iterator[ValidationIssue]:
    if schema.IMAGE not in df.columns:
        return
    images = df[schema.IMAGE].astype(str)
    dup = images.duplicated(keep=False) & df[schema.IMAGE].map(_present)
    for i in np.flatnonzero(dup.to_numpy(bool)):
        n = int((images == images.iloc[i]).sum())
        yield ValidationIssue(int(i), names[i], schema.IMAGE, f"duplicate image (listed {n} times)")


def pixel_digest(path: str | os.PathLike) -> str:
    """A hash of the decoded image (shape and pixel values), equal for the same film in another file or format."""
    from cxrlab.io import read_image

    pixels, _ = read_image(path)
    digest = hashlib.sha256(str(pixels.shape).encode())
    digest.update(np.ascontiguousarray(pixels, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _same_pixels(df: pd.DataFrame, names: list[str], *,
                 progress: Callable[[int], None] | None) -> Iterator[ValidationIssue]:
    if schema.IMAGE not in df.columns:
        return
    digests: dict[int, str] = {}
    for i, image in enumerate(df[schema.IMAGE]):
        if _present(image) and Path(str(image)).is_file():
            try:
                digests[i] = pixel_digest(image)
            except InputError as exc:
                yield ValidationIssue(i, names[i], schema.IMAGE, f"unreadable image: {exc.reason}")
        if progress is not None:
            progress(1)
    rows_of: dict[str, list[int]] = {}
    for i, digest in digests.items():
        rows_of.setdefault(digest, []).append(i)
    images = df[schema.IMAGE].astype(str)
    patients = df[schema.PATIENT_ID].astype(str) if schema.PATIENT_ID in df.columns else None
    for rows in rows_of.values():
        paths = {images.iloc[i] for i in rows}
        if len(paths) < 2:  # one path listed twice: _duplicates reports it
            continue
        for i in rows:
            others = sorted({images.iloc[j] for j in rows if images.iloc[j] != images.iloc[i]})
            shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            if patients is not None and len({patients.iloc[j] for j in rows}) > 1:
                owners = ", ".join(sorted({patients.iloc[j] for j in rows}))
                yield ValidationIssue(i, names[i], schema.IMAGE, f"same pixels as {shown} under other patient(s) "
                                      f"(patients {owners}): one film could fall on both sides of a split "
                                      "(`cxrlab data split --join-same-films` keeps them together)")
            else:
                yield ValidationIssue(i, names[i], schema.IMAGE, f"same pixels as {shown} (same patient)",
                                      WARNING)


def _contradictory_sex(df: pd.DataFrame, names: list[str]) -> Iterator[ValidationIssue]:
    if schema.SEX not in df.columns or schema.PATIENT_ID not in df.columns:
        return
    known = df[df[schema.SEX].isin(schema.SEXES)]
    per_patient = known.groupby(schema.PATIENT_ID)[schema.SEX].nunique()
    bad = set(per_patient[per_patient > 1].index)
    for i in np.flatnonzero(df[schema.PATIENT_ID].isin(bad).to_numpy(bool) & df[schema.SEX].isin(schema.SEXES)):
        pid = df[schema.PATIENT_ID].iloc[i]
        sexes = "/".join(sorted(known.loc[known[schema.PATIENT_ID] == pid, schema.SEX].unique()))
        yield ValidationIssue(int(i), names[i], schema.SEX, f"patient {pid} has contradictory sex ({sexes})")


def _contradictory_age(df: pd.DataFrame, names: list[str]) -> Iterator[ValidationIssue]:
    """Warning: a patient's ages spread wider than the time between their images allows (+1 year of rounding)."""
    if schema.AGE not in df.columns or schema.PATIENT_ID not in df.columns:
        return
    age = pd.to_numeric(df[schema.AGE], errors="coerce")
    offset = pd.to_numeric(df[schema.OFFSET_DAYS], errors="coerce") if schema.OFFSET_DAYS in df.columns else \
        pd.Series(np.nan, index=df.index)
    frame = pd.DataFrame({"p": df[schema.PATIENT_ID].astype(str), "age": age, "offset": offset})
    per = frame.groupby("p").agg(lo=("age", "min"), hi=("age", "max"), first=("offset", "min"), last=("offset", "max"))
    allowed = (per["last"] - per["first"]).fillna(0) / 365.25 + 1.0
    bad = per[(per["hi"] - per["lo"]) > allowed]
    for i in np.flatnonzero(frame["p"].isin(bad.index).to_numpy(bool) & age.notna().to_numpy(bool)):
        p = frame["p"].iloc[i]
        yield ValidationIssue(int(i), names[i], schema.AGE, f"patient {p} has ages {bad.loc[p, 'lo']:g}-"
                                                          f"{bad.loc[p, 'hi']:g} across images", WARNING)


def _files(df: pd.DataFrame, names: list[str], *, check_masks: bool,
           progress: Callable[[int], None] | None) -> Iterator[ValidationIssue]:
    mask_cols = [c for c in df.columns if c.startswith("mask_")] if check_masks else []
    image_col = df[schema.IMAGE] if schema.IMAGE in df.columns else pd.Series([None] * len(df))
    for i, image in enumerate(image_col):
        shape = None
        if _present(image):
            if not Path(str(image)).is_file():
                yield ValidationIssue(i, names[i], schema.IMAGE, "image file does not exist")
            elif mask_cols:
                try:
                    shape = image_size(image)
                except InputError as exc:
                    yield ValidationIssue(i, names[i], schema.IMAGE, f"unreadable image header: {exc.reason}")
        for col in mask_cols:
            mask = df[col].iloc[i]
            if not _present(mask):
                continue
            if not Path(str(mask)).is_file():
                yield ValidationIssue(i, names[i], col, f"mask file does not exist: {mask}")
                continue
            try:
                mshape = image_size(mask)
            except InputError as exc:
                yield ValidationIssue(i, names[i], col, f"unreadable mask header: {exc.reason}")
                continue
            if shape is not None and mshape != shape:
                yield ValidationIssue(i, names[i], col, f"mask size {mshape[1]}x{mshape[0]} differs from image "
                                                        f"{shape[1]}x{shape[0]}")
        if progress is not None:
            progress(1)
