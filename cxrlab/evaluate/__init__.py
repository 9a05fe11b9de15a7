"""Evaluation: metric functions over numpy arrays (no torch), patient-level bootstrap CIs, subgroup tables,
reader agreement, and the HTML report of a run directory.

>>> from cxrlab.evaluate import binary_metrics
>>> binary_metrics(y, p, patient_ids, fixed_threshold=t_val)["metrics"]["auc"]
{'value': 0.91, 'low': 0.86, 'high': 0.95, 'n_boot': 1000}
"""

from cxrlab.evaluate.agreement import agreement_table
from cxrlab.evaluate.binary import (
    binary_metrics,
    brier,
    roc_auc,
    threshold_metrics,
    validation_threshold,
    youden_threshold,
)
from cxrlab.evaluate.bootstrap import Estimate, bootstrap
from cxrlab.evaluate.calibration import calibration, expected_calibration_error, reliability_curve
from cxrlab.evaluate.multiclass import classification_scores, confusion_matrix, multiclass_metrics
from cxrlab.evaluate.ordinal import collapse_scores, macro_mae, ordinal_metrics, quadratic_kappa
from cxrlab.evaluate.regression import bland_altman, regression_metrics, regression_scores
from cxrlab.evaluate.subgroups import bin_column, subgroup_table

__all__ = [
    "Estimate", "agreement_table", "bin_column", "binary_metrics", "build_report", "build_sequence_report", "bland_altman", "bootstrap", "brier",
    "calibration", "classification_scores", "collapse_scores", "confusion_matrix", "expected_calibration_error",
    "macro_mae", "multiclass_metrics", "ordinal_metrics", "quadratic_kappa", "regression_metrics",
    "regression_scores", "reliability_curve", "roc_auc", "subgroup_table", "threshold_metrics",
    "validation_threshold", "youden_threshold",
]


def __getattr__(name: str):
    # the report pulls in matplotlib and jinja2: load it only when asked for
    if name == "build_report":
        from cxrlab.evaluate.report import build_report

        return build_report
    if name == "build_sequence_report":
        from cxrlab.evaluate.sequence_report import build_sequence_report

        return build_sequence_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
