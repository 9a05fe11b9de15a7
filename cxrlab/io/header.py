"""The small, identifier-free header record that travels with every image read by :mod:`cxrlab.io`."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ImageHeader:
    """What cxrlab keeps from a file's header. Identifiers are salted hashes; names/birth dates never appear."""

    format: str                         # "dicom", "png", "jpeg", ... (decided from the content)
    rows: int
    columns: int
    bits_stored: int
    photometric: str                    # MONOCHROME1/2 for DICOM, "MONOCHROME2" or "RGB" for raster files
    modality: str | None = None         # CR, DX, ... (DICOM only)
    view_position: str | None = None    # PA, AP, LL ... as written in the file
    laterality: str | None = None
    pixel_spacing: tuple[float, float] | None = None  # mm (row, column)
    age: float | None = None            # years
    sex: str | None = None              # M / F / O
    study_date: str | None = None       # YYYYMMDD
    accession_hash: str | None = None
    patient_hash: str | None = None
    study_hash: str | None = None       # hashed StudyInstanceUID (joins annotations without keeping the UID)

    def to_dict(self) -> dict:
        return asdict(self)
