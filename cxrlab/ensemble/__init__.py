"""Ensembles of base learners (FLANNEL, Qiao et al. 2021): out-of-fold probabilities, combiners, focal loss.

- :mod:`~cxrlab.ensemble.oof`: assemble (N, L, C) out-of-fold probabilities from per-fold predictions over one
  patient-level K-fold split, refusing any probability from a model that trained on that patient.
- :mod:`~cxrlab.ensemble.combiners`: the combiner registry (``mean``, ``vote``, ``stacking``,
  ``neural_tanh``, ``neural_softmax``), all with ``fit(oof_probs, y)`` / ``predict(probs)``.
- :mod:`~cxrlab.ensemble.weight_module`: the neural weight module (outer product → linear → tanh/softmax).
- :mod:`~cxrlab.ensemble.loss`: focal loss with α = inverse class frequency by default.
- :mod:`~cxrlab.ensemble.crossval`: a combiner's own out-of-fold predictions, fold by fold.

>>> oof = assemble_oof(assignment, fold_predictions)
>>> probs = create_combiner("neural_tanh").fit(oof.probs, y).predict(test_probs)
"""

from cxrlab.ensemble.combiners import COMBINERS, Combiner, create_combiner, list_combiners, register_combiner
from cxrlab.ensemble.crossval import cross_validate_combiner
from cxrlab.ensemble.loss import FocalLoss
from cxrlab.ensemble.neural import NeuralCombiner
from cxrlab.ensemble.oof import FoldPredictions, LeakageError, OutOfFold, assemble_oof, fold_predictions_from_table
from cxrlab.ensemble.weight_module import NeuralWeightModule

__all__ = [
    "COMBINERS", "Combiner", "FocalLoss", "FoldPredictions", "LeakageError", "NeuralCombiner",
    "NeuralWeightModule", "OutOfFold", "assemble_oof", "create_combiner", "cross_validate_combiner",
    "fold_predictions_from_table", "list_combiners", "register_combiner",
]
