"""Masked multi-source losses: a sample contributes only to the terms it has a label for.

``-1`` marks a missing class label; mask availability is a 0/1 tensor per sample and target. A term with no
labelled sample in the batch is absent (not a zero that would dilute the average).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_head_ce(logits: list[Tensor], head: Tensor, target: Tensor) -> Tensor | None:
    """Mean over heads present in the batch of each head's mean cross-entropy on its own labelled samples.

    ``logits[h]``: (B, C_h) for every sample; ``head``: (B,) which head a sample belongs to (-1 none);
    ``target``: (B,) class within its head (-1 missing).
    """
    terms = []
    for h, out in enumerate(logits):
        sel = (head == h) & (target >= 0)
        if sel.any():
            terms.append(F.cross_entropy(out[sel].float(), target[sel]))
    return torch.stack(terms).mean() if terms else None


def masked_ce(logits: Tensor, target: Tensor) -> Tensor | None:
    sel = target >= 0
    return F.cross_entropy(logits[sel].float(), target[sel]) if sel.any() else None


def masked_bce_maps(logits: Tensor, target: Tensor, have: Tensor) -> Tensor | None:
    """Per-pixel BCE of (B, K, h, w) maps against soft targets in [0, 1], only where ``have[b, k]`` is 1;
    each available target map weighs the same."""
    sel = have.bool()
    if not sel.any():
        return None
    per_map = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").mean(dim=(2, 3))
    return per_map[sel].mean()
