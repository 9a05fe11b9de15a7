"""Segmentation losses by name (the ``loss`` key of a segmentation config).

>>> loss_fn = build_loss(LossConfig(name="tversky", alpha=0.3, beta=0.7))
>>> loss = loss_fn(logits, target, weight)    # N×K×H×W each; weight 0 = pixel/channel not supervised

- ``bce_dice`` (default): :class:`DiceBCELoss`, BCE + soft Dice per (image, channel), the trainer's loss since
  the first version; unchanged, so a config without ``loss`` trains exactly as before.
- ``dice``, ``tversky``, ``focal``: segmentation-models-pytorch's ``DiceLoss``, ``TverskyLoss``, ``FocalLoss``
  in multilabel mode (each output channel its own sigmoid). Unsupervised pixels (weight 0: a target an image
  has no mask for, SCR's retrocardiac lung) are passed as smp's ``ignore_index``. smp's Dice and Tversky are
  computed per channel over the whole batch and count zero for a channel without any positive pixel in the
  batch, so an all-clear batch teaches them nothing; ``bce_weight`` adds smp's ``SoftBCEWithLogitsLoss``
  (same ignored pixels) for that, e.g. when disease-free images are to be learned as negatives.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from segmentation_models_pytorch.losses import DiceLoss, FocalLoss, SoftBCEWithLogitsLoss, TverskyLoss
from torch import nn

LOSS_NAMES = ("bce_dice", "dice", "tversky", "focal")
IGNORE = -1  # the target value smp's losses are told to ignore
# The options each loss takes, with their defaults (None: smp's own, e.g. no class weight in focal).
OPTIONS: dict[str, dict[str, float | None]] = {
    "bce_dice": {},
    "dice": {"bce_weight": 0.0, "smooth": 0.0},
    # Tversky: alpha weighs false positives, beta false negatives; beta > alpha favours recall (small lesions).
    "tversky": {"alpha": 0.3, "beta": 0.7, "gamma": 1.0, "bce_weight": 0.0, "smooth": 0.0},
    # Focal: gamma focuses on hard pixels; alpha (optional, in (0, 1)) weighs the positive class.
    "focal": {"alpha": None, "gamma": 2.0, "bce_weight": 0.0},
}


class LossConfig(BaseModel):
    """``loss: tversky`` or ``loss: {name: tversky, alpha: 0.3, beta: 0.7}``; options a loss does not take are
    errors, options left out take that loss's defaults (``OPTIONS``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "bce_dice"
    alpha: float | None = Field(None, ge=0)  # tversky: false-positive weight; focal: positive-class weight
    beta: float | None = Field(None, ge=0)  # tversky: false-negative weight
    gamma: float | None = Field(None, ge=0)  # focal: focusing exponent; tversky: exponent of the loss
    bce_weight: float | None = Field(None, ge=0)  # dice/tversky/focal: + bce_weight * BCE (0 = none)
    smooth: float | None = Field(None, ge=0)  # dice/tversky: smoothing constant of smp's score

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data):
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _check(self) -> "LossConfig":
        if self.name not in LOSS_NAMES:
            raise ValueError(f"unknown loss {self.name!r}; choose one of {', '.join(LOSS_NAMES)}")
        for key in ("alpha", "beta", "gamma", "bce_weight", "smooth"):
            if getattr(self, key) is not None and key not in OPTIONS[self.name]:
                raise ValueError(f"loss {self.name!r} has no option {key!r} (it takes: "
                                 f"{', '.join(OPTIONS[self.name]) or 'none'})")
        if self.name == "focal" and self.alpha is not None and not 0 < self.alpha < 1:
            raise ValueError("focal alpha must be in (0, 1)")
        return self

    def option(self, key: str) -> float | None:
        value = getattr(self, key)
        return OPTIONS[self.name].get(key) if value is None else value


class DiceBCELoss(nn.Module):
    """BCE-with-logits + soft Dice, both weighted per pixel and channel by ``w`` (0 = unsupervised).

    Dice is computed per (image, channel) and averaged over the supervised pairs, so an image without a heart
    mask neither rewards nor penalises the heart channel.
    """

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, eps: float = 1.0):
        super().__init__()
        self.bce_weight, self.dice_weight, self.eps = bce_weight, dice_weight, eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        bce = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
        bce = (bce * weight).sum() / weight.sum().clamp_min(1.0)
        p = torch.sigmoid(logits) * weight
        t = target * weight
        inter = (p * t).sum(dim=(2, 3))
        denom = p.sum(dim=(2, 3)) + t.sum(dim=(2, 3))
        supervised = (weight.sum(dim=(2, 3)) > 0).float()
        dice = 1.0 - (2 * inter + self.eps) / (denom + self.eps)
        dice = (dice * supervised).sum() / supervised.sum().clamp_min(1.0)
        return self.bce_weight * bce + self.dice_weight * dice


class SmpLoss(nn.Module):
    """One of smp's multilabel losses (+ optional BCE) behind the trainer's ``(logits, target, weight)`` call."""

    def __init__(self, loss: nn.Module, bce_weight: float = 0.0):
        super().__init__()
        self.loss, self.bce_weight = loss, bce_weight
        self.bce = SoftBCEWithLogitsLoss(ignore_index=IGNORE, reduction="none") if bce_weight else None

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        supervised = weight > 0
        target = torch.where(supervised, target.float(), torch.full_like(target, float(IGNORE), dtype=torch.float))
        if not supervised.any():  # nothing to learn from in this batch (also: smp's focal would average nothing)
            return logits.sum() * 0.0
        loss = self.loss(logits, target)
        if self.bce is not None:
            # smp's BCE zeroes ignored pixels but averages over all; average over the supervised ones instead
            bce = self.bce(logits, target).sum() / supervised.sum().clamp_min(1)
            loss = loss + self.bce_weight * bce
        return loss


def build_loss(cfg: LossConfig | str | None = None) -> nn.Module:
    """The loss module a config names; called as ``loss_fn(logits, target, weight)``."""
    cfg = LossConfig.model_validate(cfg if cfg is not None else {})
    if cfg.name == "bce_dice":
        return DiceBCELoss()
    if cfg.name == "dice":
        inner: nn.Module = DiceLoss("multilabel", from_logits=True, smooth=cfg.option("smooth"),
                                    ignore_index=IGNORE)
    elif cfg.name == "tversky":
        inner = TverskyLoss("multilabel", from_logits=True, smooth=cfg.option("smooth"), ignore_index=IGNORE,
                            alpha=cfg.option("alpha"), beta=cfg.option("beta"), gamma=cfg.option("gamma"))
    else:
        # binary mode: mean over every supervised pixel of every channel. (smp 0.6's multilabel focal indexes
        # each channel with the whole N×K×H×W ignore mask and fails whenever ignore_index is set.)
        inner = FocalLoss("binary", alpha=cfg.option("alpha"), gamma=cfg.option("gamma"), ignore_index=IGNORE)
    return SmpLoss(inner, cfg.option("bce_weight") or 0.0)
