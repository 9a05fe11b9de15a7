"""The pretraining config (pydantic, unknown keys refused): backbone, input size, objectives, schedule.

>>> cfg = load_pretrain_config("lite0-xray")          # a shipped config by name, or a YAML path
>>> cfg.objectives.supervised.enabled, cfg.objectives.ssl.method
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cxrlab.errors import ConfigError, InputError

CONFIG_DIR = Path(__file__).parent / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SupervisedSpec(_Strict):
    """Multi-task heads from whatever labels each source has; a missing label masks its loss term."""

    enabled: bool = True
    weight: float = Field(1.0, gt=0)
    # One diagnosis head per source_dataset; its classes come from the first of these columns the source has.
    diagnosis_columns: list[str] = Field(default_factory=lambda: ["finding_coarse", "finding"])
    # Values that mean "no label" (rows with them do not enter the diagnosis loss).
    unlabeled_values: list[str] = Field(default_factory=lambda: ["unlabeled", "", "not recorded"])
    # Segmentation targets: name -> alternatives (first present wins per row); "a+b" = union of two masks.
    masks: dict[str, list[str]] = Field(default_factory=lambda: {
        "lungs": ["mask_lungs", "mask_right_lung+mask_left_lung", "mask_v7_lungs"],
        "heart": ["mask_heart"],
        "infection": ["mask_infection"]})
    mask_weight: float = Field(1.0, ge=0)
    view_column: str = "view"
    view_values: list[str] = Field(default_factory=lambda: ["PA", "AP", "AP Supine", "L"])
    view_weight: float = Field(0.5, ge=0)


class SslSpec(_Strict):
    """Self-supervised objective from lightly (loss, projection head and view transform are lightly's)."""

    enabled: bool = False
    method: Literal["simclr"] = "simclr"
    weight: float = Field(1.0, gt=0)
    temperature: float = Field(0.2, gt=0)
    projection_dim: int = Field(128, ge=8)
    hidden_dim: int = Field(512, ge=8)
    min_scale: float = Field(0.3, gt=0, le=1)
    cj_prob: float = Field(0.5, ge=0, le=1)   # brightness/contrast jitter (no hue/saturation on grey films)
    cj_strength: float = Field(0.5, ge=0)
    blur_prob: float = Field(0.2, ge=0, le=1)
    hflip_prob: float = Field(0.5, ge=0, le=1)


class ObjectivesSpec(_Strict):
    supervised: SupervisedSpec = Field(default_factory=SupervisedSpec)
    ssl: SslSpec = Field(default_factory=SslSpec)

    @model_validator(mode="after")
    def _one(self) -> "ObjectivesSpec":
        if not (self.supervised.enabled or self.ssl.enabled):
            raise ValueError("enable at least one objective (objectives.supervised.enabled / objectives.ssl.enabled)")
        return self


class PretrainConfig(_Strict):
    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"  # the starting point: any weight source of the backbone
    size: int = Field(128, ge=32)
    epochs: float = Field(4, gt=0)  # may be fractional (a share of one pass)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(20, ge=0)
    checkpoint_every: int = Field(50, ge=1)  # steps
    log_every: int = Field(10, ge=1)
    seed: int = 0
    bf16: Literal["auto", "on", "off"] = "auto"  # autocast to bf16 where the CPU has native bf16
    channels_last: bool = True
    threads: int | None = Field(None, ge=1)
    max_images_per_source: int | None = Field(None, ge=1)  # a budget cap, sampled per source with the seed
    objectives: ObjectivesSpec = Field(default_factory=ObjectivesSpec)

    @field_validator("bf16", mode="before")
    @classmethod
    def _yaml_bool(cls, v: Any) -> Any:  # YAML reads on/off as booleans
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _size(self) -> "PretrainConfig":
        if self.size % 32:
            raise ValueError(f"size must be a multiple of 32, got {self.size}")
        return self


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _set(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k} is not a section")
    node[keys[-1]] = value


def load_pretrain_config(source: str | os.PathLike, overrides: list[str] | None = None) -> PretrainConfig:
    """A shipped config by name or a YAML file; ``overrides`` are ``key.sub=value`` (YAML values)."""
    path = Path(source)
    if not path.exists() and (CONFIG_DIR / f"{source}.yaml").is_file():
        path = CONFIG_DIR / f"{source}.yaml"
    if not path.is_file():
        raise InputError(path, f"pretraining config not found (a YAML file or a shipped name: "
                               f"{', '.join(shipped_configs())})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(path, f"not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InputError(path, "a pretraining config must be a YAML mapping")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        _set(data, key.strip(), yaml.safe_load(value))
    try:
        return PretrainConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        raise InputError(path, f"{err['msg']}", field=where) from None
