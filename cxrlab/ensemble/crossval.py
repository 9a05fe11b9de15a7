"""A combiner's own out-of-fold predictions: for each fold k, fit on the other folds' out-of-fold base-learner
probabilities and predict fold k, so every image's ensemble prediction comes from a combiner (and base models)
that never trained on its patient. This is what a per-fold mean ± sd table of combiners is computed from.

>>> probs = cross_validate_combiner("neural_tanh", oof, y, gamma=2.0)     # (N, C)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cxrlab.ensemble.combiners import check_labels, create_combiner
from cxrlab.ensemble.oof import OutOfFold


def cross_validate_combiner(name: str, oof: OutOfFold, y: Any, **options: Any) -> np.ndarray:
    """``(N, C)`` predictions of combiner ``name`` (with ``options``), each fold predicted by a fresh combiner
    fitted on the remaining folds."""
    labels = check_labels(y, len(oof.probs), oof.probs.shape[2])
    n, _, n_classes = oof.probs.shape
    out = np.zeros((n, n_classes))
    for fold in np.unique(oof.folds):
        held = oof.folds == fold
        combiner = create_combiner(name, **options).fit(oof.probs[~held], labels[~held])
        out[held] = combiner.predict(oof.probs[held])
    return out
