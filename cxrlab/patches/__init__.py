"""Patch-by-patch classification building blocks (Oh, Park & Ye 2020), lung-centred and vectorised.

- :mod:`~cxrlab.patches.sampling`: centres drawn from lung pixels jointly; windows clamped to the image.
- :mod:`~cxrlab.patches.extract`: the masked S×S canvas and K P×P patches from it (``PatchSampler``).
- :mod:`~cxrlab.patches.aggregate`: K patch predictions → one image prediction (majority vote or mean).
- :mod:`~cxrlab.patches.cam`: probabilistic Grad-CAM, per-patch maps averaged back onto the canvas.

>>> sampler = PatchSampler()                       # S=1024, P=224, K=100
>>> patches = sampler(image, lung_mask, np.random.default_rng(0))
>>> probs, label = aggregate_patches(model_probs_of(patches.images), "vote")
"""

from cxrlab.patches.aggregate import (AGGREGATIONS, Aggregate, aggregate_patches, majority_vote, mean_probability,
                                      vote_counts)
from cxrlab.patches.cam import patch_maps_to_canvas, probabilistic_patch_cam
from cxrlab.patches.extract import (CANVAS_SIZE, PATCH_COUNT, PATCH_SIZE, Patches, PatchSampler, extract_patches,
                                    extract_patches_batch, masked_canvas)
from cxrlab.patches.sampling import clamp_windows, sample_lung_centres

__all__ = [
    "AGGREGATIONS", "Aggregate", "CANVAS_SIZE", "PATCH_COUNT", "PATCH_SIZE", "PatchSampler", "Patches",
    "aggregate_patches", "clamp_windows", "extract_patches", "extract_patches_batch", "majority_vote",
    "masked_canvas", "mean_probability", "patch_maps_to_canvas", "probabilistic_patch_cam",
    "sample_lung_centres", "vote_counts",
]
