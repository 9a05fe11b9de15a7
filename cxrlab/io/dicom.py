"""DICOM radiographs through pydicom: Modality LUT, then VOI LUT / window, MONOCHROME1 inverted, [0, 1] floats.

Identifiers never leave this module in clear: the header record carries salted hashes only
(:func:`cxrlab.utils.salted_hash`), and :func:`deidentify_dicom` strips a dataset before anything keeps it.
"""

from __future__ import annotations

import io
import os
import re
import warnings

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder

from cxrlab.errors import InputError
from cxrlab.io.header import ImageHeader
from cxrlab.utils import salted_hash

# Projection radiography (CR computed, DX digital, RG radiographic imaging, DR/"DX" variants used by vendors);
# "OT"/"SC" files are often scanned documents, so they are not accepted as radiographs.
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG", "PX"})

# The package that adds a decoder, per transfer syntax family, for the error message.
_PLUGIN_HINT = {
    "JPEG-LS": "pylibjpeg-libjpeg (or pyjpegls)",
    "JPEG 2000": "pylibjpeg-openjpeg",
    "High-Throughput JPEG 2000": "pylibjpeg-openjpeg>=2.2",
    "RLE": "pylibjpeg-rle",
    "JPEG": "pylibjpeg-libjpeg",
    "Deflated": "(built into pydicom; file is damaged)",
}

# Attributes that identify a person and are never copied (DICOM PS3.15 basic profile, the relevant part).
IDENTIFYING_TAGS = (
    "PatientName", "PatientBirthDate", "PatientBirthTime", "PatientAddress", "OtherPatientNames",
    "OtherPatientIDs", "OtherPatientIDsSequence", "PatientMotherBirthName", "PatientTelephoneNumbers",
    "ReferringPhysicianName", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy",
    "RequestingPhysician", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "StationName", "MilitaryRank", "BranchOfService", "MedicalRecordLocator", "EthnicGroup", "Occupation",
    "AdditionalPatientHistory", "PatientComments", "ResponsiblePerson", "CountryOfResidence",
    "RegionOfResidence", "PatientInsurancePlanCodeSequence", "DeviceSerialNumber", "IssuerOfPatientID",
)
# Attributes replaced by salted hashes (kept joinable, never readable).
HASHED_TAGS = ("PatientID", "AccessionNumber", "StudyID")


def max_pixels_default() -> int:
    """Pixel limit against decompression bombs: ``$CXRLAB_MAX_PIXELS`` or 50 megapixels."""
    return int(os.environ.get("CXRLAB_MAX_PIXELS", 50_000_000))


def parse_dicom(data: bytes, name: str, *, header_only: bool = False) -> Dataset:
    """Parse bytes as DICOM, with errors that say what is wrong with which file."""
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=header_only,
                               force=not data[128:132] == b"DICM")
    except InvalidDicomError as exc:
        raise InputError(name, f"not a valid DICOM file: {exc}") from exc
    except Exception as exc:  # pydicom raises EOFError/ValueError/... on truncated or corrupt files
        raise InputError(name, f"corrupt or truncated DICOM file: {type(exc).__name__}: {exc}") from exc


def read_dicom_header(path: str | os.PathLike) -> Dataset:
    """Header only (no pixel decoding): for importers that need tags of thousands of files quickly."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as exc:
        raise InputError(path, f"corrupt or truncated DICOM file: {type(exc).__name__}: {exc}") from exc


def check_modality(ds: Dataset, name: str, allowed: frozenset[str] = RADIOGRAPH_MODALITIES) -> None:
    modality = str(ds.get("Modality", "") or "").upper()
    if modality and modality not in allowed:
        raise InputError(name, f"modality {modality} is not a projection radiograph "
                               f"(accepted: {', '.join(sorted(allowed))})", field="Modality")


def decode_dicom(ds: Dataset, name: str, *, max_pixels: int, min_size: int,
                 allowed_modalities: frozenset[str] = RADIOGRAPH_MODALITIES) -> tuple[np.ndarray, ImageHeader]:
    check_modality(ds, name, allowed_modalities)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(name, "DICOM file has no pixel data", field="PixelData")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if not rows or not cols:
        raise InputError(name, "DICOM header has no image size (Rows/Columns missing or 0)", field="Rows")
    frames = _number_of_frames(ds, name)
    if frames > 1:  # decided from the header, before anything decodes a whole volume
        raise InputError(name, f"multi-frame DICOM ({frames} frames of {cols}x{rows}): a volume or a series, not a "
                               "single projection radiograph; export the frame to read as its own file",
                         field="NumberOfFrames")
    _check_size(rows, cols, name, max_pixels=max_pixels, min_size=min_size)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        raise InputError(name, "palette-colour DICOM (PALETTE COLOR) is not a radiograph",
                         field="PhotometricInterpretation")
    _check_decoder(ds, name)
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        raise InputError(name, f"cannot decode pixel data: {exc}", field="TransferSyntaxUID") from exc
    except Exception as exc:  # short pixel data, bad fragments...
        raise InputError(name, f"corrupt or truncated pixel data: {type(exc).__name__}: {exc}") from exc
    if arr.ndim == 3:
        raise InputError(name, f"colour DICOM ({photometric}) is not a radiograph", field="PhotometricInterpretation")
    out = to_unit_range(arr, ds, name)
    header = header_from_dataset(ds, fmt="dicom", rows=out.shape[0], cols=out.shape[1])
    return out, header


def _number_of_frames(ds: Dataset, name: str) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise InputError(name, f"NumberOfFrames {ds.get('NumberOfFrames')!r} is not a number",
                         field="NumberOfFrames") from None


def to_unit_range(arr: np.ndarray, ds: Dataset, name: str = "DICOM") -> np.ndarray:
    """Modality LUT, VOI LUT / window, scale to [0, 1], invert MONOCHROME1 (so air is dark).

    An invalid window (width < 1, a malformed VOI LUT) is ignored with a warning: the full range is used, as
    for a file without one.
    """
    try:
        values = apply_modality_lut(arr, ds)
    except Exception as exc:  # malformed Modality LUT / rescale attributes
        raise InputError(name, f"invalid Modality LUT or rescale attributes: {exc}", field="RescaleSlope") from exc
    lo = hi = None
    if "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds):
        try:
            windowed = apply_voi_lut(values, ds)
            lo, hi = _voi_output_range(ds)
            values = windowed
        except Exception as exc:  # noqa: BLE001 - pydicom raises ValueError/IndexError/TypeError on bad VOI tags
            warnings.warn(f"{name}: invalid window / VOI LUT ignored ({exc}); using the full range", stacklevel=3)
            lo = hi = None
    if lo is None:
        lo, hi = float(np.min(values)), float(np.max(values))
    values = np.asarray(values, dtype=np.float64)
    out = np.zeros(values.shape, np.float32) if hi <= lo else np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 1.0 - out
    return np.ascontiguousarray(out, dtype=np.float32)


def _voi_output_range(ds: Dataset) -> tuple[float, float]:
    """The output range pydicom's VOI step maps to (PS3.3 C.11.2), so windowing semantics are kept."""
    if "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(ds.get("BitsStored", 16))
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    lo, hi = (0.0, 2.0**bits - 1) if int(ds.get("PixelRepresentation", 0)) == 0 else \
        (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return lo, hi


def _check_decoder(ds: Dataset, name: str) -> None:
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if tsyntax is None:
        return
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise InputError(name, f"unsupported transfer syntax {tsyntax.name} ({tsyntax}): no pydicom decoder",
                         field="TransferSyntaxUID") from exc
    if not decoder.is_available:
        hint = next((pkg for key, pkg in _PLUGIN_HINT.items() if key in tsyntax.name), "a pydicom pixel plugin")
        raise InputError(name, f"transfer syntax {tsyntax.name} needs a decoder that is not installed: "
                               f"pip install {hint}", field="TransferSyntaxUID")


def _check_size(rows: int, cols: int, name: str, *, max_pixels: int, min_size: int) -> None:
    if rows * cols > max_pixels:
        raise InputError(name, f"image of {cols}x{rows} = {rows * cols} pixels exceeds the limit of {max_pixels} "
                               "(decompression bomb guard; raise max_pixels or $CXRLAB_MAX_PIXELS)")
    if min(rows, cols) < min_size:
        raise InputError(name, f"image of {cols}x{rows} is smaller than the minimum side of {min_size} px")


def _age_years(value: str | None) -> float | None:
    """DICOM AS ('065Y', '018M', '030W', '010D') to years."""
    match = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY]?)\s*", str(value or ""))
    if not match:
        return None
    n, unit = int(match.group(1)), match.group(2) or "Y"
    return round(n / {"Y": 1, "M": 12, "W": 52.1775, "D": 365.25}[unit], 3)


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return str(value).strip() or None if value is not None else None


def header_from_dataset(ds: Dataset, *, fmt: str = "dicom", rows: int | None = None,
                        cols: int | None = None) -> ImageHeader:
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    sex = (_text(ds, "PatientSex") or "").upper()[:1] or None

    def hashed(keyword: str) -> str | None:
        value = _text(ds, keyword)
        return salted_hash(value) if value else None

    return ImageHeader(
        format=fmt,
        rows=int(rows if rows is not None else ds.get("Rows", 0) or 0),
        columns=int(cols if cols is not None else ds.get("Columns", 0) or 0),
        bits_stored=int(ds.get("BitsStored", 0) or 0),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper(),
        modality=(_text(ds, "Modality") or "").upper() or None,
        view_position=_text(ds, "ViewPosition"),
        laterality=_text(ds, "ImageLaterality") or _text(ds, "Laterality"),
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,
        age=_age_years(_text(ds, "PatientAge")),
        sex=sex if sex in {"M", "F", "O"} else None,
        study_date=_text(ds, "StudyDate"),
        accession_hash=hashed("AccessionNumber"),
        patient_hash=hashed("PatientID"),
        study_hash=hashed("StudyInstanceUID"),
    )


def deidentify_dicom(ds: Dataset, *, salt: str | None = None) -> Dataset:
    """Strip a dataset in place before anything keeps it (and return it).

    Names, birth dates, addresses, physicians, institution and private tags are removed; PatientID,
    AccessionNumber and StudyID become salted hashes, so studies stay joinable without being readable.
    """
    for keyword in IDENTIFYING_TAGS:
        if keyword in ds:
            delattr(ds, keyword)
    for keyword in HASHED_TAGS:
        value = _text(ds, keyword)
        if value:
            setattr(ds, keyword, salted_hash(value, salt))
    ds.remove_private_tags()
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "cxrlab basic profile: identifiers removed, IDs salted-hashed"
    return ds
