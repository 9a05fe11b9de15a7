"""Data preparers: a study's manifests -> the columns its recipe and readers need, by name (registry).

- ``none``: the manifest as given (it already holds the task's columns, e.g. the phantom's ``opacity_right``).
- ``covid_qu_ex_opacity``: per-lung grade 0-3 from COVID-QU-Ex's infection share of each lung (0 %, 1-33 %,
  34-66 %, 67-100 %, the opacity paper's bins on the percentage rounded to an integer); normal images are
  grade 0; images without an infection annotation (non-COVID pneumonia) have unknown grades and are dropped.
- ``ieee8023_brixia``: frontal ieee8023 images that both BrixIA readers scored, with right and left lung masks
  (V7 manual masks, lungVAE predictions otherwise), the readers' zone scores kept (``StudySpec.readers`` turns
  them into per-lung grades).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrlab.data.manifest import Manifest
from cxrlab.errors import InputError
from cxrlab.registry import Registry

PREPARERS: Registry = Registry("study data preparer")


def _require(m: Manifest, columns: list[str], name: str) -> None:
    missing = [c for c in columns if c not in m.df.columns]
    if missing:
        raise InputError(m.source or "manifest", f"preparer {name} needs column(s) {missing}", field=missing[0])


@PREPARERS.register("none", description="the manifest as given")
def prepare_none(m: Manifest) -> Manifest:
    return m


def opacity_grade(fraction: float) -> float:
    """The opacity paper's per-lung grade from the opaque share: 0 %, 1-33 %, 34-66 %, 67-100 %."""
    if pd.isna(fraction):
        return np.nan
    pct = round(100 * float(fraction))
    return 0.0 if pct == 0 else 1.0 if pct <= 33 else 2.0 if pct <= 66 else 3.0


@PREPARERS.register("covid_qu_ex_opacity", description="per-lung grades from COVID-QU-Ex infection masks")
def prepare_covid_qu_ex(m: Manifest) -> Manifest:
    cols = ["finding_coarse", "infection_fraction_right_lung", "infection_fraction_left_lung"]
    _require(m, cols, "covid_qu_ex_opacity")
    df = m.df[m.df["finding_coarse"].isin(["covid19", "normal"])].copy()
    for side in ("right", "left"):
        df[f"opacity_{side}"] = [0.0 if f == "normal" else opacity_grade(x)
                                 for f, x in zip(df["finding_coarse"], df[f"infection_fraction_{side}_lung"])]
    df = df[df["opacity_right"].notna() & df["opacity_left"].notna()].reset_index(drop=True)
    return Manifest(df, source=m.source)


@PREPARERS.register("ieee8023_brixia", description="ieee8023 frontal images scored by both BrixIA readers")
def prepare_brixia(m: Manifest) -> Manifest:
    zones = [f"brixia_{r}_{z}" for r in ("senior", "junior") for z in "ABCDEF"]
    _require(m, ["view", "mask_v7_right_lung", "mask_v7_left_lung", *zones], "ieee8023_brixia")
    df = m.df[m.df["view"].isin(["PA", "AP", "AP Supine"]) & m.df[zones].notna().all(axis=1)].copy()
    df = df[df["mask_v7_right_lung"].notna() & df["mask_v7_left_lung"].notna()]
    df["mask_right_lung"], df["mask_left_lung"] = df["mask_v7_right_lung"], df["mask_v7_left_lung"]
    df["mask_lungs"] = df["mask_v7_lungs"] if "mask_v7_lungs" in df.columns else np.nan
    if "mask_lungvae_predicted" in df.columns:
        df["mask_lungs"] = df["mask_lungs"].where(df["mask_lungs"].notna(), df["mask_lungvae_predicted"])
    drop = [c for c in df.columns if c.startswith("mask_v7") or c == "mask_lungvae_predicted"]
    return Manifest(df.drop(columns=drop).reset_index(drop=True), source=m.source)


def reader_grades(df: pd.DataFrame, zones: list[str]) -> np.ndarray:
    """A reader's per-lung grade: the mean of the lung's zone scores (0-3 each), rounded half up."""
    return np.floor(df[zones].to_numpy(dtype=float).mean(axis=1) + 0.5)
