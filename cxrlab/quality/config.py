"""The quality-gate config (pydantic; unknown keys are errors). Saved resolved in the run's ``quality.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cxrlab.config import load_validated


class QualityConfig(BaseModel):
    """What ``cxrlab quality train`` fits: a frozen backbone's pooled features feed three small models."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"
    size: int = Field(224, ge=32, le=1024, description="square input side of the feature extractor")
    batch_size: int = Field(32, gt=0)
    seed: int = 0
    val_fraction: float = Field(0.2, gt=0, lt=1, description="patients held out to set the OOD thresholds")
    # the view and polarity models: logistic regression on standardised pooled features
    C: float = Field(1.0, gt=0, description="inverse L2 strength of the logistic regressions")
    view_threshold: float = Field(0.5, gt=0, lt=1, description="lateral probability above which a film is lateral")
    inversion_threshold: float = Field(0.5, gt=0, lt=1)
    # out-of-distribution: a distance to the chest films' features
    ood_method: Literal["knn", "mahalanobis"] = "knn"
    ood_neighbors: int = Field(5, ge=1, description="knn: distance to the k-th nearest chest film")
    ood_components: int = Field(64, ge=2, description="mahalanobis: PCA components (at most films / 10)")
    ood_warn_quantile: float = Field(0.99, gt=0, le=1, description="of held-out chest films' distances")
    ood_refuse_quantile: float = Field(1.0, gt=0, le=1)
    ood_refuse_margin: float = Field(1.25, ge=1, description="refuse above margin x the refuse quantile")
    lateral: Literal["refuse", "warn"] = "refuse"
    max_images_per_source: int | None = Field(None, gt=0, description="sub-sample large sources (by patient)")


def load_quality_config(source: str | Path | dict[str, Any] | QualityConfig | None = None,
                        overrides: list[str] | None = None) -> QualityConfig:
    return load_validated(QualityConfig, source, overrides, "quality config")
