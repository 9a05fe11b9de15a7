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


def check_pretrain_overlap(weights: str | None, df: pd.DataFrame, split_column: str, allow: bool = False,
                           allow_key: str = "model.allow_pretrain_overlap") -> dict | None:
    """Refuse (``ConfigError``) a ``run:`` backbone that saw a val/test patient or image, unless ``allow``
    (``allow_key`` is the config key the message names: recipes nest it under ``model``)."""
    found = pretrain_overlap(weights, df, split_column)
    if found is None or allow or not (found["patients"] or found["images"]):
        return found
    example = ", ".join(found["patients"][:3])
    raise ConfigError(
        f"weights run:{found['run']}: the pretrained backbone saw {len(found['patients'])} of this run's "
        f"{found['held_out_patients']} val/test patients ({found['images']} images, e.g. {example}); pretrain "
        f"without them (cxrlab pretrain --exclude-patients-of MANIFEST or --exclude-sources) or set "
        f"{allow_key}: true")


def seen_in_pretraining(weights: str | None, df: pd.DataFrame) -> pd.Series | None:
    """Per row of ``df``: did the ``run:`` backbone see this patient (or this very image)? None for other sources.
    ``cxrlab embed`` stores it beside each vector, so heads fitted on the vectors can apply the guard later."""
    src = WeightSource.parse(weights)
    if src.kind != "run":
        return None
    seen = seen_by(src.arg)
    images = df["image_path" if "image_path" in df.columns else schema.IMAGE].astype(str)  # seen.csv: absolute
    # images given directly (a folder) have no patient id: only the image itself can match
    pids = df[schema.PATIENT_ID].astype(str) if schema.PATIENT_ID in df.columns else pd.Series("", index=df.index)
    hit = pids.isin(set(seen["patient_id"]) - {""}) | images.isin(set(seen["image"]))
    return hit.astype("float64")


def check_embedding_overlap(meta: pd.DataFrame, held: "pd.Series | list[bool]", allow: bool = False) -> None:
    """Refuse (``ConfigError``) a head whose val/test rows (``held``) have vectors from a pretrained backbone that
    saw their patient (the ``seen_in_pretraining`` column ``cxrlab embed`` writes), unless ``allow``."""
    if allow or schema.SEEN_IN_PRETRAINING not in meta.columns:
        return
    flags = pd.to_numeric(meta[schema.SEEN_IN_PRETRAINING], errors="coerce").fillna(0).to_numpy() > 0
    bad = flags & pd.Series(held).to_numpy(bool)
    if bad.any():
        patients = sorted(set(meta.loc[bad, schema.PATIENT_ID].astype(str)))
        raise ConfigError(
            f"embeddings: the pretrained backbone that made them saw {len(patients)} patient(s) this head "
            f"validates or tests on ({int(bad.sum())} films, e.g. {', '.join(patients[:3])}); embed with a backbone "
            f"pretrained without them (cxrlab pretrain --exclude-patients-of MANIFEST or --exclude-sources) or pass "
            f"allow_pretrain_overlap=True")
