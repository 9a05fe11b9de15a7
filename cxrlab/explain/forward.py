"""CAM from the forward pass, for a global-average-pool + linear head (no backward pass, any backend).

For ``logits = W · GAP(A) + b`` Grad-CAM's channel weights (the spatial mean of ``d logit_k / dA``) are
``W[k] / (h·w)``: Grad-CAM reduces to CAM, ``ReLU(Σ_c W[k, c] A_c)``, up to a positive factor that the per-image
min-max scaling removes. So the map of class ``k`` needs only the last feature map ``A`` (which an ONNX export
can return as a second output) and the head's weight matrix:

>>> maps = forward_cam(feature_map, head.weight, class_index=2, size=(224, 224))

Maps are normalised exactly as pytorch-grad-cam (``cxrlab.explain.compute_cam``) normalises them: ReLU,
min-max to [0, 1] per image, resized (cv2, bilinear) to the input's ``H×W``, and scaled once more (its
aggregation over target layers). The equality only holds when nothing non-linear (ReLU, dropout in train mode,
an MLP) sits between ``A`` and the pooled linear head; other heads keep the backward pass.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pytorch_grad_cam.utils.image import scale_cam_image

from cxrlab.errors import ConfigError


def _array(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def class_activation(feature_map, head_weight, class_index: int | Sequence[int], sign: float = 1.0
                     ) -> np.ndarray:
    """``N×h×w`` raw CAMs ``Σ_c sign · W[k_n, c] · A[n, c]`` (before ReLU and scaling)."""
    a, w = _array(feature_map), _array(head_weight)
    if a.ndim != 4:
        raise ConfigError(f"forward_cam: feature map must be N×C×h×w, got shape {a.shape}")
    if w.ndim == 1:
        w = w[None]
    if w.ndim != 2 or w.shape[1] != a.shape[1]:
        raise ConfigError(f"forward_cam: head weight of shape {w.shape} does not fit {a.shape[1]} channels "
                          "(expected classes × channels)")
    k = np.broadcast_to(np.asarray(class_index, dtype=int), (a.shape[0],))
    if ((k < 0) | (k >= w.shape[0])).any():
        raise ConfigError(f"forward_cam: class index {k.tolist()} out of range for {w.shape[0]} classes")
    return sign * np.einsum("nc,nchw->nhw", w[k], a)


def forward_cam(feature_map, head_weight, class_index: int | Sequence[int], size: tuple[int, int] | None = None,
                *, sign: float = 1.0) -> np.ndarray:
    """``N×H×W`` CAM of class ``class_index`` (one per image, or one for all) = ReLU(Σ_c w_c A_c), normalised
    like pytorch-grad-cam; ``size`` = the input's ``(H, W)`` (None: the feature map's own size).

    ``feature_map``: ``N×C×h×w`` (numpy or torch) — the input of the global average pool; ``head_weight``:
    the linear head's ``K×C`` weight. ``sign=-1`` gives the map of ``-logit`` (the negative class of a
    single-logit head, as ``OutputTarget(0, sign=-1)`` does on the Grad-CAM path).
    """
    cam = np.maximum(class_activation(feature_map, head_weight, class_index, sign), 0)
    target = None if size is None else (int(size[1]), int(size[0]))  # cv2 wants (width, height)
    return scale_cam_image(scale_cam_image(cam, target))


def forward_heatmap(feature_map, head_weight, probabilities, size: tuple[int, int] | None = None) -> np.ndarray:
    """The opacity paper's probability-weighted heatmap (``explain.probability_weighted_heatmap``) from the
    forward pass: ``rescale(Σ_k p_k · CAM_k)``; ``probabilities`` ``N×K``, ``size`` as in :func:`forward_cam`."""
    from cxrlab.explain.heatmap import rescale

    p = _array(probabilities)
    n_classes = _array(head_weight).reshape(-1, _array(feature_map).shape[1]).shape[0]
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise ConfigError(f"forward_heatmap: probabilities of shape {p.shape} for {n_classes} classes")
    maps = np.stack([forward_cam(feature_map, head_weight, k, size) for k in range(n_classes)])
    return rescale(np.einsum("nk,knhw->nhw", p, maps))
