"""The segmentation training config (pydantic; unknown keys are errors). Saved resolved as ``recipe.yaml``."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cxrlab.anatomy.losses import LossConfig
from cxrlab.data import schema
from cxrlab.config import load_validated

LUNG_TARGETS = [schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG, schema.MASK_HEART]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitConfig(_Strict):
    """Patient-level split. ``by_source`` splits each source separately so each keeps held-out patients."""

    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    seed: int = 0
    by_source: bool = True
    split_csv: str | None = None  # reuse a saved split (columns image, patient_id, split)


class AugmentConfig(_Strict):
    enabled: bool = True
    rotate: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.06
    aspect: float = 0.1  # log x/y stretch: covers COVID-QU-Ex's squashed 256x256 images
    gamma: float = 0.3
    hflip: float = 0.0  # mirrored chests are not anatomical; post-processing corrects swapped sides anyway


class SegmentationConfig(_Strict):
    """Everything a segmentation run needs; the run directory saves it resolved (incl. the seed)."""

    name: str = "lung"
    arch: str = "unet"
    encoder: str = "efficientnet_lite0"
    weights: str = "imagenet"
    # a ``run:`` backbone that saw a val/test patient is refused (cxrlab.pretrain.guard) unless this is true
    allow_pretrain_overlap: bool = False
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)  # passed to the smp class (decoder_channels...)
    size: int = 256
    targets: list[str] = Field(default_factory=lambda: list(LUNG_TARGETS))
    input: Literal["image", "image+lung"] = "image"
    input_mask_column: str = schema.MASK_LUNGS
    manifests: list[str] = Field(default_factory=list)
    column_map: dict[str, str] = Field(default_factory=dict)
    sources: list[str] | None = None  # fnmatch patterns on source_dataset; None = all
    # Sources whose lung masks EXCLUDE the retrocardiac lung (SCR): lung channels ignore the heart region there.
    retrocardiac_excluded_sources: list[str] = Field(default_factory=lambda: ["*SCR*"])
    # Lung annotation conventions (name → source patterns). Annotators of different datasets draw lungs
    # differently (SCR leaves out the retrocardiac lung; a model trained on V7 alone and one trained on COVID-QU-Ex
    # alone score ~0.86 Dice on each other's masks), and one set of lung channels cannot follow all of them. Each convention adds its own patient-right/left lung output
    # channels ("mask_right_lung@name"), supervised only by its sources; the shared channels in ``targets`` keep
    # learning from every source and are the general-purpose output. ``LungSegmenter(convention=...)`` chooses.
    lung_conventions: dict[str, list[str]] = Field(default_factory=dict)
    # Checkpoint selection on val: "source_macro" = mean over sources (groups, with group_column) of each one's
    # mean lung Dice (each counts once; pooling lets the largest source decide alone), "pooled" = mean over
    # val images.
    selection: Literal["source_macro", "pooled"] = "source_macro"
    split: SplitConfig = Field(default_factory=SplitConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    epochs: int = Field(30, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(16, ge=1)
    samples_per_epoch: int | None = Field(None, ge=1)  # group-balanced draw per epoch; None = all
    # The manifest column whose values are the groups that draw balances (default: source_dataset). The same
    # groups stratify the patient-level split (split.by_source), choose the capped val subset and are what
    # selection "source_macro" averages over. Severity sets it to "<source>|disease"/"<source>|clear" groups.
    group_column: str | None = None
    # Relative share of each group in that draw (fnmatch pattern → weight); None = equal shares.
    source_weights: dict[str, float] | None = None
    # Training loss: bce_dice (default) | dice | tversky | focal, with options (``cxrlab.anatomy.losses``).
    loss: LossConfig = Field(default_factory=LossConfig)
    # Start from another run's weights (its directory → checkpoints/best.pt, or a .pt file): fine-tuning.
    # Only the model weights are taken; optimiser, schedule and split are this run's own.
    init_from: str | None = None
    val_max_images: int | None = Field(400, ge=1)
    patience: int = Field(6, ge=1)
    min_delta: float = Field(1e-3, ge=0)
    seed: int = 0
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    threads: int | None = None
    # Where training runs: "auto" = a CUDA GPU when torch sees one, else the CPU. Not part of the recipe's
    # identity: a run may resume on another device; the device used is in the recipe header and history.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # DataLoader worker processes for reading/augmenting (0 = in the training process; a GPU needs several).
    num_workers: int = Field(0, ge=0)
    threshold: float = Field(0.5, gt=0, lt=1)
    evaluate_test: bool = True
    out: str = "runs/segment"

    @field_validator("size")
    @classmethod
    def _size(cls, v: int) -> int:
        if v < 64 or v % 32:
            raise ValueError("size must be a multiple of 32 and >= 64 (the encoders downsample by 32)")
        return v

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v) or not all(c.startswith("mask_") for c in v):
            raise ValueError("targets must be distinct mask columns (names starting with 'mask_')")
        return v

    @field_validator("source_weights")
    @classmethod
    def _weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None and (not v or any(w <= 0 for w in v.values())):
            raise ValueError("source_weights must map source patterns to positive weights")
        return v

    @field_validator("lung_conventions")
    @classmethod
    def _conventions(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, patterns in v.items():
            if not name.isidentifier() or not patterns:
                raise ValueError(f"lung convention {name!r}: the name must be an identifier (letters, digits, _) "
                                 "and it needs at least one source pattern")
        return v

    @model_validator(mode="after")
    def _lungs_paired(self) -> "SegmentationConfig":
        has = {schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG} & set(self.targets)
        if len(has) == 1:
            raise ValueError("targets must hold both mask_right_lung and mask_left_lung or neither")
        if self.lung_conventions and not has:
            raise ValueError("lung_conventions need a lung model (targets with mask_right_lung/mask_left_lung)")
        return self

    @property
    def in_channels(self) -> int:
        return 2 if self.input == "image+lung" else 1

    @property
    def is_lung_model(self) -> bool:
        return schema.MASK_RIGHT_LUNG in self.targets

    @property
    def channels(self) -> list[str]:
        """The model's output channels: ``targets``, then right/left lung per convention."""
        return self.targets + [convention_channel(side, name) for name in self.lung_conventions
                               for side in (schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG)]

    def convention_of(self, source: str) -> str | None:
        """The first convention whose patterns match ``source`` (None: the shared channels only)."""
        for name, patterns in self.lung_conventions.items():
            if any(fnmatch.fnmatch(source, p) for p in patterns):
                return name
        return None


def convention_channel(column: str, convention: str) -> str:
    return f"{column}@{convention}"


def load_config(source: str | Path | dict[str, Any] | SegmentationConfig | None = None,
                overrides: list[str] | None = None) -> SegmentationConfig:
    """A YAML file, a dict or a config, plus ``key=value`` overrides → a validated config."""
    return load_validated(SegmentationConfig, source, overrides, "segmentation config")
