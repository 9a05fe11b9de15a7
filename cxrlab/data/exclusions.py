"""Exclusion criteria of the opacity-grading paper, each configurable, each excluded row reported with why.

Criteria, applied in this order (a row is reported under the first one that removes it):

1. ``first_per_accession`` - keep only the first image of each accession (column ``accession``; row order
   or ``offset_days`` decides "first");
2. ``min_age`` - patients younger than 18 (unknown age kept unless ``drop_unknown_age``);
3. ``radiographs_only`` - modality not a projection radiograph (``modality`` column: CT, MR, ...);
4. ``frontal_only`` - lateral views (``view`` = L);
5. ``drop_unreadable`` - images :func:`cxrlab.io.read_image` refuses (reads every remaining image);
6. ``drop_documents`` - scanned pages / documents: DICOM ConversionType SD, a document-like series
   description, or pixels that look like paper (mostly white, almost no mid-grey);
7. ``flag_inverted`` - images whose polarity looks inverted (the mediastinum darker than the lungs): flagged
   in column ``inverted_suspect`` and the report, removed only with ``drop_inverted``;
8. ``quality_run`` - the learned image-quality gate (:mod:`cxrlab.quality`): removes films it refuses (lateral,
   not a chest radiograph) under criterion ``quality_gate``, decides ``inverted_suspect`` instead of the rule
   of 7, and adds its ``quality_*`` columns to the kept rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.data.manifest import Manifest
from cxrlab.errors import InputError
from cxrlab.io import read_image

RADIOGRAPH_MODALITY_NAMES = {"CR", "DX", "DR", "RG", "PX", "X-RAY", "XRAY", "X RAY"}
DOCUMENT_WORDS = ("DOCUMENT", "REQUISITION", "REPORT", "SCANNED", "SCREEN SAVE", "SCREENSHOT")
REPORT_COLUMNS = ["row", "image", "patient_id", "criterion", "action", "reason"]


@dataclass
class ExclusionConfig:
    first_per_accession: bool = True
    accession_column: str = "accession"
    min_age: float | None = 18.0
    drop_unknown_age: bool = False
    radiographs_only: bool = True
    frontal_only: bool = True
    drop_unreadable: bool = True
    drop_documents: bool = True
    flag_inverted: bool = True
    drop_inverted: bool = False
    read_kwargs: dict = field(default_factory=dict)  # passed to read_image (max_pixels, min_size)
    quality_run: str | None = None  # a `cxrlab quality train` run directory

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ExclusionResult:
    kept: Manifest
    report: pd.DataFrame  # REPORT_COLUMNS: one row per excluded (or flagged) image
    skipped: list[str] = field(default_factory=list)  # criteria that could not apply (column missing)

    def counts(self) -> pd.Series:
        return self.report.groupby(["criterion", "action"]).size()


def document_like(image: np.ndarray) -> bool:
    """Paper: mostly near-white background and almost no mid-grey (radiographs are mostly mid-grey)."""
    # thresholds leave washed-out films (median ~0.85, few pixels >= 0.93) among the radiographs
    paper = float((image >= 0.93).mean())
    midtone = float(((image > 0.15) & (image < 0.85)).mean())
    return paper > 0.5 and midtone < 0.15


def inverted_like(image: np.ndarray) -> bool:
    """A frontal chest film shows a bright mediastinum/spine between two dark lungs; inverted, the reverse."""
    h, w = image.shape
    rows = slice(int(0.3 * h), int(0.75 * h))
    centre = float(image[rows, int(0.45 * w): int(0.55 * w)].mean())
    # both lung bands must be brighter: an off-centre patient puts the heart into one band, not into both
    right_band = float(image[rows, int(0.15 * w): int(0.35 * w)].mean())
    left_band = float(image[rows, int(0.65 * w): int(0.85 * w)].mean())
    return centre < min(right_band, left_band) - 0.05


def apply_exclusions(manifest: Manifest, config: ExclusionConfig | None = None,
                     progress: Callable[[int], None] | None = None) -> ExclusionResult:
    config = config or ExclusionConfig()
    df = manifest.df.reset_index(drop=True)
    reasons: dict[int, tuple[str, str]] = {}
    flagged: dict[int, str] = {}

    def exclude(mask: pd.Series | np.ndarray, criterion: str, reason: Callable[[int], str]) -> None:
        for i in np.flatnonzero(np.asarray(mask, bool)):
            reasons.setdefault(int(i), (criterion, reason(int(i))))

    needs = {"first_per_accession": config.accession_column, "min_age": schema.AGE,
             "radiographs_only": "modality", "frontal_only": schema.VIEW}
    skipped = [f"{criterion}: no {column!r} column" for criterion, column in needs.items()
               if getattr(config, criterion) not in (False, None) and column not in df.columns]
    if config.first_per_accession and config.accession_column in df.columns:
        acc = df[config.accession_column]
        order = df.sort_values(schema.OFFSET_DAYS, kind="stable", na_position="last").index \
            if schema.OFFSET_DAYS in df.columns else df.index
        ranked = acc.loc[order]
        later = (ranked.notna() & ranked.duplicated(keep="first")).reindex(df.index)
        exclude(later, "first_per_accession", lambda i: f"not the first image of accession {acc.iloc[i]}")
    if config.min_age is not None and schema.AGE in df.columns:
        age = pd.to_numeric(df[schema.AGE], errors="coerce")
        exclude(age < config.min_age, "min_age", lambda i: f"age {age.iloc[i]:g} < {config.min_age:g}")
        if config.drop_unknown_age:
            exclude(age.isna(), "min_age", lambda i: "age unknown")
    if config.radiographs_only and "modality" in df.columns:
        modality = df["modality"].astype(str).str.strip().str.upper()
        bad = df["modality"].notna() & ~modality.isin(RADIOGRAPH_MODALITY_NAMES)
        exclude(bad, "radiographs_only", lambda i: f"modality {df['modality'].iloc[i]} is not a radiograph")
    if config.frontal_only and schema.VIEW in df.columns:
        exclude(df[schema.VIEW] == "L", "frontal_only", lambda i: "lateral view")
    if config.drop_documents:
        words = pd.Series(False, index=df.index)
        if "conversion_type" in df.columns:
            words |= df["conversion_type"].astype(str).str.upper().eq("SD")
        if "series_description" in df.columns:
            desc = df["series_description"].fillna("").astype(str).str.upper()
            words |= desc.map(lambda d: any(w in d for w in DOCUMENT_WORDS))
        exclude(words, "drop_documents", lambda i: "scanned document (DICOM header)")

    gate = None
    if config.quality_run is not None:
        from cxrlab.quality.batch import as_gate

        gate = as_gate(config.quality_run)
    pending: list[tuple[int, np.ndarray]] = []
    quality_rows: dict[int, dict] = {}

    def judge() -> None:
        """Run the gate on the films read so far (batched: one forward pass for many films)."""
        for (i, _), result in zip(pending, gate.check_many([im for _, im in pending])):
            quality_rows[i] = result.columns()
            if result.verdict == "refuse":
                reasons[i] = ("quality_gate", "; ".join(result.reasons))
            elif result.inverted:
                flagged[i] = "; ".join(r for r in result.reasons if r.startswith("inverted"))
                if config.drop_inverted:
                    reasons[i] = ("flag_inverted", flagged[i])
        pending.clear()

    if config.drop_unreadable or config.drop_documents or config.flag_inverted or gate is not None:
        for i in range(len(df)):
            if i in reasons:
                continue
            try:
                image, _ = read_image(df[schema.IMAGE].iloc[i], **config.read_kwargs)
            except InputError as exc:
                if config.drop_unreadable:
                    reasons[i] = ("drop_unreadable", exc.reason)
                continue
            finally:
                if progress is not None:
                    progress(1)
            if config.drop_documents and document_like(image):
                reasons[i] = ("drop_documents", "looks like a scanned page (mostly white, little mid-grey)")
            elif gate is not None:
                pending.append((i, image))
                if len(pending) >= 32:
                    judge()
            elif config.flag_inverted and inverted_like(image):
                flagged[i] = "mediastinum darker than the lungs: inverted polarity (or not a frontal view)"
                if config.drop_inverted:
                    reasons[i] = ("flag_inverted", flagged[i])

    if pending:
        judge()
    report = pd.DataFrame(
        [{"row": i, "image": df[schema.IMAGE].iloc[i], "patient_id": df[schema.PATIENT_ID].iloc[i],
          "criterion": c, "action": "excluded", "reason": r} for i, (c, r) in sorted(reasons.items())]
        + [{"row": i, "image": df[schema.IMAGE].iloc[i], "patient_id": df[schema.PATIENT_ID].iloc[i],
            "criterion": "flag_inverted", "action": "flagged", "reason": r}
           for i, r in sorted(flagged.items()) if i not in reasons],
        columns=REPORT_COLUMNS)
    kept = df.drop(index=list(reasons)).copy()
    if config.flag_inverted or gate is not None:
        kept["inverted_suspect"] = [int(i in flagged) for i in kept.index]
    if gate is not None:
        from cxrlab.quality.batch import QUALITY_COLUMNS

        quality = pd.DataFrame.from_dict(quality_rows, orient="index", columns=QUALITY_COLUMNS)
        kept = kept.join(quality)
    attrs = {**manifest.attrs, "exclusions": config.to_dict()}
    return ExclusionResult(Manifest(kept.reset_index(drop=True), manifest.source, attrs), report, skipped)
