"""Leakage guard: a downstream run may not evaluate on patients its pretrained backbone has already seen.

``check_pretrain_overlap("run:runs/pre", table, "split")`` raises a ``ConfigError`` naming the run, how many
val/test patients and images the backbone saw, and the way out (``cxrlab pretrain --exclude-patients-of`` /
``--exclude-sources``, or ``model.allow_pretrain_overlap: true`` to accept it knowingly). Other weight sources
(ImageNet, files, TorchXRayVision) carry no record of what they saw and pass.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrlab.data import schema
from cxrlab.errors import ConfigError, InputError
from cxrlab.models.weights import WeightSource

SEEN_FILE = "seen.csv"


def seen_by(run: str | Path) -> pd.DataFrame:
    """The images (``image``, ``patient_id``, ``source_dataset``) a pretraining run saw."""
    path = Path(run) / SEEN_FILE
    if not path.is_file():
        raise InputError(path, "a pretrained backbone without its record of seen images cannot be checked for "
                               "leakage (is this a cxrlab pretrain run?)")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def pretrain_overlap(weights: str | None, df: pd.DataFrame, split_column: str,
                     parts: tuple[str, ...] = ("val", "test")) -> dict | None:
    """What of ``df``'s ``parts`` a ``run:`` backbone saw: patients and images in common; None for other sources."""
    src = WeightSource.parse(weights)
    if src.kind != "run":
        return None
    seen = seen_by(src.arg)
    held = df[df[split_column].isin(parts)]
    patients = sorted(set(held[schema.PATIENT_ID].astype(str)) & set(seen["patient_id"]))
    images = set(held[schema.IMAGE].astype(str)) & set(seen["image"])
    held_images = held[schema.PATIENT_ID].astype(str).isin(patients) | held[schema.IMAGE].astype(str).isin(images)
    return {"run": src.arg, "patients": patients, "images": int(held_images.sum()),
            "held_out_patients": int(held[schema.PATIENT_ID].nunique())}


def check_pretrain_overlap(weights: str | None, df: pd.DataFrame, split_column: str, allow: bool = False) -> dict | None:
    """Refuse (``ConfigError``) a ``run:`` backbone that saw a val/test patient or image, unless ``allow``."""
    found = pretrain_overlap(weights, df, split_column)
    if found is None or allow or not (found["patients"] or found["images"]):
        return found
    example = ", ".join(found["patients"][:3])
    raise ConfigError(
        f"weights run:{found['run']}: the pretrained backbone saw {len(found['patients'])} of this run's "
        f"{found['held_out_patients']} val/test patients ({found['images']} images, e.g. {example}); pretrain "
        f"without them (cxrlab pretrain --exclude-patients-of MANIFEST or --exclude-sources) or set "
        f"model.allow_pretrain_overlap: true")
