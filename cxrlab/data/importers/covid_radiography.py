"""COVID-19 Radiography Database (Kaggle, Rahman/Chowdhury et al.): ``<Class>/images/*.png`` and
``<Class>/masks/*.png`` (older releases: ``<Class>/*.png`` without masks).

The database gives no patient ids, so each image is its own pseudo-patient (``patient_is_image`` = 1).
Its lung masks are 256x256 while images are 299x299: with ``out`` they are resized (nearest neighbour) to
their image and written under ``out/masks``; without ``out`` they are referenced as they are and
validation reports the size mismatch.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import pandas as pd

from cxrlab.data import schema
from cxrlab.data.importers import register_importer
from cxrlab.data.importers._common import finish, scan_images
from cxrlab.data.manifest import Manifest
from cxrlab.errors import InputError
from cxrlab.io import image_size, read_mask, write_png

CLASS_FINDINGS = {"covid": "covid19", "normal": "normal", "viral pneumonia": "viral", "lung_opacity": "lung_opacity",
                  "lung opacity": "lung_opacity"}


def conform_mask(mask_path: Path, image_path: Path, out_path: Path | None) -> Path:
    """The mask itself when sizes agree, else a nearest-neighbour resize written to ``out_path``."""
    shape = image_size(image_path)
    if out_path is None or image_size(mask_path) == shape:
        return mask_path
    mask = read_mask(mask_path)
    write_png(out_path, cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST), mask=True)
    return out_path


@register_importer("covid_radiography", description="COVID-19 Radiography Database (class/images, class/masks)")
def import_covid_radiography(src: Path, *, out: Path | None = None,
                             source_dataset: str = "COVID-19 Radiography Database") -> Manifest:
    rows = []
    for class_dir in sorted(p for p in src.iterdir() if p.is_dir()):
        finding = CLASS_FINDINGS.get(class_dir.name.lower())
        if finding is None:
            continue
        image_dir = class_dir / "images" if (class_dir / "images").is_dir() else class_dir
        mask_dir = class_dir / "masks"
        for image in scan_images(image_dir):
            if image_dir == class_dir and image.parent != class_dir:
                continue
            mask = mask_dir / image.name
            row = {schema.IMAGE: str(image), schema.PATIENT_ID: f"covidrad_{image.stem}", schema.VIEW: "unknown",
                   schema.SOURCE_DATASET: source_dataset, schema.FINDING: finding, "patient_is_image": 1,
                   "original_class": class_dir.name}
            if mask.is_file():
                target = out / "masks" / class_dir.name / f"{image.stem}.png" if out is not None else None
                row[schema.MASK_LUNGS] = str(conform_mask(mask, image, target))
            rows.append(row)
    if not rows:
        raise InputError(src, f"no class folders ({', '.join(sorted(CLASS_FINDINGS))}) with images found")
    return finish(pd.DataFrame(rows), source=src)
