"""The ICU-admission study (issue #17): arms, one shared patient-level k-fold, fold runners and the table."""

from cxrlab.icu.arms import ARMS, Arm, get_arm
from cxrlab.icu.folds import make_folds, primary_rows
from cxrlab.icu.table import arm_summary, youden_threshold

__all__ = ["ARMS", "Arm", "get_arm", "make_folds", "primary_rows", "arm_summary", "youden_threshold"]
