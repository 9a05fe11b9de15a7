"""Severity scoring: lungs (Stage I) → disease inside the lungs (Stage II) → per-lung and per-zone scores.

>>> run = train_severity("severity.yaml")                 # Stage II training + fitted scoring parameters
>>> pipe = SeverityPipeline.from_run(run)                 # or .from_runs(lung_run, disease_run)
>>> result = pipe.predict(image); result.record["brixia_global"]
>>> score_masks(disease, patient_right, patient_left, lung_zones(patient_right, patient_left))   # masks only

Score definitions: :mod:`cxrlab.severity.scores` and ``docs/severity.md``.
"""

from cxrlab.severity.config import ScoringParams, SeverityConfig, load_severity_config
from cxrlab.severity.evaluation import evaluate_severity
from cxrlab.severity.fitting import fit_scoring
from cxrlab.severity.overlay import render_overlay, write_overlay
from cxrlab.severity.pipeline import SeverityPipeline, SeverityResult
from cxrlab.severity.scores import (
    brixia_total,
    brixia_zone_scores,
    discard_outside_lungs,
    extent_grade,
    fit_brixia_cutpoints,
    fit_zone_threshold,
    geographic_extent,
    involvement_grade,
    lung_involvement,
    opacity_score,
    score_masks,
    zone_count_score,
    zone_involvement,
)
from cxrlab.severity.train import train_severity

__all__ = [
    "ScoringParams", "SeverityConfig", "SeverityPipeline", "SeverityResult", "brixia_total", "brixia_zone_scores",
    "discard_outside_lungs", "evaluate_severity", "extent_grade", "fit_brixia_cutpoints", "fit_scoring",
    "fit_zone_threshold", "geographic_extent", "involvement_grade", "load_severity_config", "lung_involvement",
    "opacity_score", "render_overlay", "score_masks", "train_severity", "write_overlay", "zone_count_score",
    "zone_involvement",
]
