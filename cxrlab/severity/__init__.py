"""Severity scoring: lungs (Stage I) → disease inside the lungs (Stage II) → per-lung and per-zone scores.

>>> run = train_severity("severity.yaml")                 # Stage II training + fitted scoring parameters
>>> pipe = SeverityPipeline.from_run(run)                 # or .from_runs(lung_run, disease_run)
>>> result = pipe.predict(image); result.record["brixia_global"]
>>> score_masks(disease, patient_right, patient_left, lung_zones(patient_right, patient_left))   # masks only

Score definitions: :mod:`cxrlab.severity.scores` and ``docs/severity.md``.
"""

from importlib import import_module

# Public name → the module that defines it. Loaded on first use, so `import cxrlab.severity.compare` (e.g. by the
# command line's help) does not pull in torch and the two networks' libraries.
_EXPORTS = {
    "ScoringParams": "config", "SeverityConfig": "config", "load_severity_config": "config",
    "evaluate_severity": "evaluation", "fit_scoring": "fitting", "render_overlay": "overlay",
    "write_overlay": "overlay", "SeverityPipeline": "pipeline", "SeverityResult": "pipeline",
    "train_severity": "train",
    **{name: "scores" for name in (
        "brixia_total", "brixia_zone_scores", "discard_outside_lungs", "extent_grade", "fit_brixia_cutpoints",
        "fit_zone_threshold", "geographic_extent", "involvement_grade", "lung_involvement", "opacity_score",
        "score_masks", "zone_count_score", "zone_involvement")},
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f"cxrlab.severity.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
