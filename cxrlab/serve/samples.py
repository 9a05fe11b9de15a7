"""Upload bytes from an in-memory image (PNG, JPEG, DICOM with made-up identifiers): for the service's tests,
the benchmark's decode timings and the demo. The DICOM carries a fake patient name and ID on purpose, so that
de-identification can be checked end to end."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np

FAKE_PATIENT_NAME = "Doe^Jane"
FAKE_PATIENT_ID = "PID-0001-SECRET"


def _u8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", _u8(image))[1].tobytes()


def encode_jpeg(image: np.ndarray, quality: int = 92) -> bytes:
    return cv2.imencode(".jpg", _u8(image), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def encode_dicom(image: np.ndarray, *, view_position: str = "PA", modality: str = "DX",
                 monochrome1: bool = False, bits: int = 12) -> bytes:
    """A single-frame DX/CR radiograph (``bits``-bit, optionally MONOCHROME1) with fake identifiers."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    hi = 2**bits - 1
    pixels = np.round(np.clip(image, 0.0, 1.0) * hi).astype(np.uint16)
    if monochrome1:
        pixels = (hi - pixels).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    ds.PatientName = FAKE_PATIENT_NAME
    ds.PatientID = FAKE_PATIENT_ID
    ds.PatientBirthDate = "19600101"
    ds.AccessionNumber = "ACC-SECRET-42"
    ds.InstitutionName = "Secret General Hospital"
    ds.ViewPosition = view_position
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def train_tiny_runs(out_dir: str | Path, manifest: str | Path) -> dict[str, Path]:
    """Train tiny versions of every model the service loads (seconds each, on a phantom manifest), with the
    other packages' own trainers, and write ``out_dir/service.yaml`` naming them. For tests and smoke runs:
    the models are real run directories but far too small to mean anything clinically.

    Reuses an existing ``out_dir/service.yaml`` (several test modules of one session share the runs).
    """
    from cxrlab.anatomy.train import train_segmentation
    from cxrlab.recipes import load_recipe
    from cxrlab.serve.config import write_service_config
    from cxrlab.severity.train import train_severity
    from cxrlab.train.trainer import train

    out = Path(out_dir)
    config = out / "service.yaml"
    runs = {"lung": out / "lung", "opacity": out / "severity", "diagnosis": out / "diagnosis", "icu": out / "icu"}
    if config.is_file():
        return runs | {"config": config}
    seg = {"arch": "unet", "encoder": "resnet18", "weights": "none", "size": 64, "epochs": 1, "batch_size": 8,
           "samples_per_epoch": 8, "val_max_images": 4, "evaluate_test": False, "seed": 0}
    train_segmentation({**seg, "manifests": [str(manifest)]}, out=runs["lung"])
    train_severity({"lung_run": str(runs["lung"]), "manifests": [str(manifest)], "out": str(runs["opacity"]),
                    "disease": {**seg, "input": "image+lung"}})
    recipe = load_recipe("phantom-diagnosis").model_dump()
    recipe["split"]["stratify"] = None  # a handful of patients cannot be stratified
    recipe["train"].update(stages=[{"epochs": 1, "train_blocks": "all", "lr": 0.003}], num_workers=0,
                           cache_dir=str(out / "cache"))
    train(recipe, str(manifest), runs["diagnosis"], show_progress=False)
    icu = dict(recipe, name="phantom-icu", tasks=[{"kind": "binary", "column": "went_icu"}],
               input={**recipe["input"], "roi": "lungs"})  # lung ROI: the classifier needs the lung stage's masks
    train(icu, str(manifest), runs["icu"], show_progress=False)
    write_service_config(config, lung_run=runs["lung"], diagnosis_run=runs["diagnosis"], icu_run=runs["icu"],
                         opacity_run=runs["opacity"])
    return runs | {"config": config}
