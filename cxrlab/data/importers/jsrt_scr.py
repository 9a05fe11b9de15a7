"""JSRT radiographs with SCR masks (van Ginneken 2006).

Images: the original raw ``JPCLN001.IMG`` files (2048x2048, 12-bit big-endian, stored inverted: they are
converted to 16-bit PNG under ``out/images``) or PNG/JPEG conversions whose name starts with the case id.
Masks: SCR folders named ``left lung``, ``right lung``, ``heart``, ``left clavicle``, ``right clavicle``
(spaces or underscores, possibly under ``fold1``/``fold2``), GIF or PNG. SCR masks are 1024x1024 while the
images are 2048x2048, so with ``out`` they are resized (nearest neighbour) to their image. SCR left/right
are the patient's.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.data.importers import register_importer
from cxrlab.data.importers._common import IMAGE_SUFFIXES, finish
from cxrlab.data.importers.covid_radiography import conform_mask
from cxrlab.data.manifest import Manifest
from cxrlab.errors import InputError
from cxrlab.io import write_png

_CASE = re.compile(r"^(JPC[LN]N\d{3})", re.IGNORECASE)
STRUCTURES = {
    "leftlung": schema.MASK_LEFT_LUNG, "rightlung": schema.MASK_RIGHT_LUNG, "heart": schema.MASK_HEART,
    "leftclavicle": "mask_left_clavicle", "rightclavicle": "mask_right_clavicle",
}
RAW_SHAPE, RAW_MAX = (2048, 2048), 4095.0


def read_jsrt_raw(path: Path, invert: bool = True) -> np.ndarray:
    """A JSRT ``.IMG`` file as float [0, 1] (air dark after inversion)."""
    data = np.fromfile(path, dtype=">u2")
    if data.size != RAW_SHAPE[0] * RAW_SHAPE[1]:
        raise InputError(path, f"raw JSRT image should hold {RAW_SHAPE[0]}x{RAW_SHAPE[1]} 16-bit values, "
                               f"found {data.size}")
    img = np.clip(data.reshape(RAW_SHAPE) / RAW_MAX, 0.0, 1.0)
    return 1.0 - img if invert else img


@register_importer("jsrt_scr", description="JSRT images (.IMG raw or PNG) + SCR lung/heart/clavicle masks")
def import_jsrt_scr(src: Path, *, out: Path | None = None, invert_raw: bool = True,
                    source_dataset: str = "JSRT + SCR") -> Manifest:
    images: dict[str, Path] = {}
    masks: dict[str, dict[str, Path]] = {}
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        match = _CASE.match(path.name)
        if not match:
            continue
        case = match.group(1).upper()
        structure = next((STRUCTURES[k] for part in reversed(path.relative_to(src).parts[:-1])
                          if (k := re.sub(r"[\s_\-]+", "", part.lower())) in STRUCTURES), None)
        if structure is not None:
            masks.setdefault(case, {})[structure] = path
        elif path.suffix.upper() == ".IMG" or path.suffix.lower() in IMAGE_SUFFIXES:
            if case not in images or path.suffix.upper() != ".IMG":  # prefer a converted file over raw
                images[case] = path
    if not images:
        raise InputError(src, "no JSRT images (JPCLNnnn / JPCNNnnn .IMG or .png) found")
    rows = []
    for case, image in sorted(images.items()):
        if image.suffix.upper() == ".IMG":
            if out is None:
                raise InputError(image, "raw JSRT .IMG images must be converted: give an output folder (--out)")
            pixels = read_jsrt_raw(image, invert_raw)
            image = write_png(out / "images" / f"{case}.png", np.round(pixels * 65535).astype(np.uint16))
        row = {schema.IMAGE: str(image), schema.PATIENT_ID: f"jsrt_{case}", schema.VIEW: "PA",
               schema.SOURCE_DATASET: source_dataset,
               schema.FINDING: "lung_nodule" if case.startswith("JPCLN") else "no_nodule", "case_id": case}
        for column, mask in masks.get(case, {}).items():
            target = out / "masks" / column.removeprefix("mask_") / f"{case}.png" if out is not None else None
            row[column] = str(conform_mask(mask, image, target))
        rows.append(row)
    return finish(pd.DataFrame(rows), source=src)
