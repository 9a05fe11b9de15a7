"""Write a phantom dataset folder in the cxrlab manifest format, or render one sample in memory."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.data.manifest import Manifest, save_manifest
from cxrlab.data.phantom.anatomy import Pose, sample_anatomy
from cxrlab.data.phantom.course import sample_course
from cxrlab.data.phantom.disease import sample_pattern
from cxrlab.data.phantom.lateral import render_lateral
from cxrlab.data.phantom.render import MASK_NAMES, RenderedStudy, render_study
from cxrlab.data.phantom.truth import ZONE_INVOLVEMENT_COLUMNS
from cxrlab.errors import ConfigError
from cxrlab.io import write_png

SOURCE = "phantom"
MASK_CONSOLIDATION = "mask_consolidation"  # extra mask column: the consolidated part of mask_disease
MASK_COLUMN = {
    "lungs": schema.MASK_LUNGS, "right_lung": schema.MASK_RIGHT_LUNG, "left_lung": schema.MASK_LEFT_LUNG,
    "heart": schema.MASK_HEART, "disease": schema.MASK_DISEASE, "consolidation": MASK_CONSOLIDATION,
}
TRUTH_COLUMNS = [
    "involvement_right", "involvement_left", schema.OPACITY_RIGHT, schema.OPACITY_LEFT, *ZONE_INVOLVEMENT_COLUMNS,
    *schema.BRIXIA_COLUMNS, schema.BRIXIA_GLOBAL, schema.GEOGRAPHIC_EXTENT, schema.OPACITY_SCORE,
]
COLUMNS = [
    *schema.CORE_COLUMNS, schema.FINDING, schema.WENT_ICU, schema.SURVIVAL_DAYS, schema.DEATH_EVENT,
    *MASK_COLUMN.values(), *TRUTH_COLUMNS,
]


def _pose(rng: np.random.Generator, ap: bool) -> Pose:
    return Pose(inspiration=rng.uniform(0.93, 1.05), ap=ap,
                shift=(rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02)), angle=rng.uniform(-5, 5))


def _marker_text(rng: np.random.Generator, ap: bool, marker_prob: float) -> str | None:
    if rng.random() >= marker_prob:
        return None
    return str(rng.choice(["PORTABLE", "AP"])) if ap else "L"


LATERAL_VIEW = "L"  # the manifest schema's lateral code


def _patient(args: tuple[Path, int, int, str, int, int, float, float]) -> list[dict]:
    """Render and write every study of one patient; independent RNG stream per patient (order-free, parallel)."""
    out, seed, index, finding, size, max_studies, marker_prob, lateral_prob = args
    rng = np.random.default_rng([seed, index])
    course = sample_course(rng, finding, max_studies)
    anat = sample_anatomy(rng, course.sex)
    pattern = sample_pattern(rng, finding)
    pid = f"PH{seed:03d}-{index:04d}"
    rows = []  # paths absolute in memory, as a Manifest holds them
    for j, (offset, severity) in enumerate(zip(course.offsets, course.severities)):
        srng = np.random.default_rng([seed, index, j + 1])
        ap = bool(srng.random() < (0.8 if severity > 0.5 else 0.2))  # sick patients get portable AP films
        study = render_study(anat, pattern, severity, _pose(srng, ap), size, srng,
                             _marker_text(srng, ap, marker_prob))
        name = f"{pid}_s{j + 1}.png"
        write_png(out / "images" / name, study.image)
        row = {
            schema.IMAGE: str(out / "images" / name), schema.PATIENT_ID: pid, schema.STUDY_ID: f"{pid}-s{j + 1}",
            schema.OFFSET_DAYS: offset, schema.VIEW: "AP" if ap else "PA", schema.SEX: course.sex,
            schema.AGE: course.age, schema.SOURCE_DATASET: SOURCE, schema.FINDING: finding,
            schema.WENT_ICU: course.went_icu, schema.SURVIVAL_DAYS: course.survival_days,
            schema.DEATH_EVENT: course.death_event,
        }
        for kind, mask in study.masks.items():
            write_png(out / "masks" / kind / name, mask, mask=True)
            row[MASK_COLUMN[kind]] = str(out / "masks" / kind / name)
        row.update(study.truth)
        rows.append(row)
        # laterals draw from their own stream, so the frontal films are the same with or without them
        lrng = np.random.default_rng([seed, index, j + 1, 7])
        if lateral_prob > 0 and lrng.random() < lateral_prob:
            lat_name = f"{pid}_s{j + 1}_lat.png"
            write_png(out / "images" / lat_name, render_lateral(anat, _pose(lrng, ap), size, lrng))
            rows.append({**{k: v for k, v in row.items() if k not in set(MASK_COLUMN.values()) | set(study.truth)},
                         schema.IMAGE: str(out / "images" / lat_name), schema.VIEW: LATERAL_VIEW})
    return rows


def generate_phantom(out_dir: str | os.PathLike, n_patients: int = 60, size: int = 256, seed: int = 0,
                     max_studies: int = 6, marker_prob: float = 0.3, lateral_prob: float = 0.0, n_jobs: int = 1,
                     on_patient: Callable[[int, int], None] | None = None) -> Path:
    """Generate ``n_patients`` synthetic patients into ``out_dir``; return the path of ``manifest.csv``.

    Diagnoses are balanced (patient ``i`` gets ``FINDINGS[perm[i] % 4]``). The same arguments give
    byte-identical images and the same manifest. ``on_patient(done, total)`` reports progress.
    ``lateral_prob``: share of studies that also get a lateral film (view ``L``, no masks), for the
    image-quality gate; the frontal films do not change with it.
    The manifest is written last and atomically, so a folder with a manifest is complete.
    """
    if n_patients < 1 or size < 32 or not 1 <= max_studies <= 6 or not 0 <= lateral_prob <= 1:
        raise ConfigError(f"phantom: need n_patients >= 1, size >= 32, 1 <= max_studies <= 6 and "
                          f"0 <= lateral_prob <= 1 (got {n_patients}, {size}, {max_studies}, {lateral_prob})")
    out = Path(out_dir).resolve()  # absolute in memory; save_manifest stores them relative
    (out / "images").mkdir(parents=True, exist_ok=True)
    for kind in MASK_NAMES:
        (out / "masks" / kind).mkdir(parents=True, exist_ok=True)
    perm = np.random.default_rng(seed).permutation(n_patients)
    jobs = [(out, seed, i, schema.FINDINGS[int(perm[i]) % len(schema.FINDINGS)], size, max_studies, marker_prob,
             lateral_prob) for i in range(n_patients)]
    rows: list[dict] = []
    if n_jobs > 1:
        with ProcessPoolExecutor(n_jobs) as pool:
            for done, patient_rows in enumerate(pool.map(_patient, jobs, chunksize=4), 1):
                rows.extend(patient_rows)
                if on_patient:
                    on_patient(done, n_patients)
    else:
        for done, job in enumerate(jobs, 1):
            rows.extend(_patient(job))
            if on_patient:
                on_patient(done, n_patients)
    df = pd.DataFrame(rows, columns=COLUMNS)
    return save_manifest(Manifest(df), out / "manifest.csv")


def render_sample(finding: str = "covid19", severity: float = 0.5, size: int = 256, seed: int = 0,
                  view: str = "PA", marker: str | None = None) -> dict:
    """One phantom radiograph in memory as a cxrlab sample dict (image float32 [0,1], masks {0,1}, labels, meta).

    Handy for service and model tests that need a realistic image with known truth and no files.
    ``view="L"`` renders a lateral film instead (image and meta only: no masks, no truth).
    """
    if finding not in schema.FINDINGS:
        raise ConfigError(f"phantom: finding must be one of {schema.FINDINGS}, got {finding!r}")
    if not 0.0 <= severity <= 1.0:
        raise ConfigError(f"phantom: severity must be in [0, 1], got {severity}")
    rng = np.random.default_rng([seed, 999_999])
    anat = sample_anatomy(rng, "M")
    pattern = sample_pattern(rng, finding)
    if view == LATERAL_VIEW:
        image = render_lateral(anat, _pose(rng, False), size, rng)
        return {schema.KEY_IMAGE: image.astype(np.float32) / 255.0, schema.KEY_LABELS: {schema.FINDING: finding},
                schema.KEY_META: {schema.PATIENT_ID: f"PH-sample-{seed}", schema.VIEW: view,
                                  schema.SOURCE_DATASET: SOURCE}}
    study: RenderedStudy = render_study(anat, pattern, severity if finding != "normal" else 0.0,
                                        _pose(rng, view == "AP"), size, rng, marker)
    sample: dict = {schema.KEY_IMAGE: study.image.astype(np.float32) / 255.0}
    for kind, mask in study.masks.items():
        column = MASK_COLUMN[kind]
        sample[schema.MASK_COLUMN_TO_KEY.get(column, f"{kind}_mask")] = mask
    sample[schema.KEY_LABELS] = {schema.FINDING: finding, **study.truth}
    sample[schema.KEY_META] = {schema.PATIENT_ID: f"PH-sample-{seed}", schema.VIEW: view,
                               schema.SOURCE_DATASET: SOURCE}
    return sample
