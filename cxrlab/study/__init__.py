"""Studies: a base recipe, a grid over recipe keys, sides and a protocol of stages, run as Ray Tune trials.

>>> run_study("aloe-opacity", ["qu.csv", "ieee.csv"], "runs/opacity", lung_model="runs/lung", preset="quick")
>>> write_report("runs/opacity")

Modules: :mod:`~cxrlab.study.spec` (the validated study file), :mod:`~cxrlab.study.grid` (combinations, ranking,
joint selection), :mod:`~cxrlab.study.prepare` (data preparers), :mod:`~cxrlab.study.trial` (one training run and
its scores), :mod:`~cxrlab.study.engine` (Ray Tune, resume), :mod:`~cxrlab.study.runner` (the protocol),
:mod:`~cxrlab.study.report` (markdown + HTML).
"""

from cxrlab.study.grid import Combination, expand_grid, joint_best, rank, top_k
from cxrlab.study.runner import fold_summary, make_splits, run_study
from cxrlab.study.spec import StudySpec, list_studies, load_study
from cxrlab.study.report import write_report

__all__ = ["Combination", "StudySpec", "expand_grid", "fold_summary", "joint_best", "list_studies", "load_study",
           "make_splits", "rank", "run_study", "top_k", "write_report"]
