"""The recipe schema (pydantic): every key a training run reads, with defaults; unknown keys are errors.

A recipe is YAML; ``--set train.lr=1e-4`` style overrides are applied before validation, and the resolved
recipe (with its seed) is saved in the run directory so the run can be repeated from it alone.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cxrlab.errors import ConfigError


class _Strict(BaseModel):
    # NaN / infinity are never meaningful here (an lr of .inf trains to NaN): refused like any bad value
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class BeforeEventSpec(_Strict):
    """Keep only images acquired before the event a model predicts (an ICU film shows the answer: tubes, lines,
    supine bedside view). A row is removed when ``flag`` is true (1/true/yes/y) or when ``offset`` >= the row's
    ``event_offset`` (same day counts as after: a same-day film may already be an ICU film). Rows without an
    event offset (never admitted) and rows with an empty flag are kept."""

    flag: str | None = Field(None, description="column that is true for images taken at/after the event (in_icu)")
    event_offset: str | None = Field(None, description="column with the event's day offset "
                                     "(icu_admission_offset_days), compared with `offset`")
    offset: str = Field("offset_days", description="the image's day offset column")
    unknown_flag: Literal["keep", "drop"] = Field(
        "keep", description="rows whose flag is neither true nor false (empty, '?'): keep or drop")
    required: bool = Field(False, description="a missing column is an error (default: recorded, not filtered)")

    @model_validator(mode="after")
    def _something(self) -> "BeforeEventSpec":
        if not self.flag and not self.event_offset:
            raise ValueError("before_event needs `flag` and/or `event_offset` (or set data.before_event: null)")
        return self


class LabelBins(_Strict):
    edges: list[float] = Field(min_length=1, description="increasing cut points; a value equal to an edge goes up")
    labels: list[Any] = Field(description="one more label than edges")

    @model_validator(mode="after")
    def _consistent(self) -> "LabelBins":
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError(f"edges must increase, got {self.edges}")
        if len(self.labels) != len(self.edges) + 1:
            raise ValueError(f"{len(self.edges)} edge(s) need {len(self.edges) + 1} labels, got {len(self.labels)}")
        return self


class DataSpec(_Strict):
    extra: Literal["train_only", "pooled"] = Field(
        "train_only", description="manifests after the first: label fusion into training only, or pooled and split")
    filter: dict[str, list[Any]] = Field(default_factory=dict, description="keep rows whose column is in the list")
    rename: dict[str, str] = Field(default_factory=dict,
                                   description="column renames applied to the extra manifests (label fusion)")
    label_map: dict[str, dict[Any, Any]] = Field(
        default_factory=dict, description="{column: {from_value: to_value}}: label values mapped (in every manifest "
        "holding the column, before data.rename), e.g. {grade: {negative: 0, mild: 0, moderate: 0, severe: 1}}")
    label_bins: dict[str, "LabelBins"] = Field(
        default_factory=dict, description="{column: {edges: [e1, ...], labels: [l0, l1, ...]}}: a numeric label "
        "cut into classes (value < e1 -> l0, e1 <= value < e2 -> l1, ...), after label_map, before data.rename; "
        "e.g. a severity score -> ICU")
    before_event: BeforeEventSpec | None = Field(None, description="keep only images taken before the event")
    quality: str | None = Field(None, description="a quality run (cxrlab quality train): films it refuses or finds "
                                "inverted are dropped before the split, listed in the run's quality_exclusions.csv")


    @field_validator("label_map")
    @classmethod
    def _maps_not_empty(cls, v: dict[str, dict[Any, Any]]) -> dict[str, dict[Any, Any]]:
        for column, table in v.items():
            if not table:
                raise ValueError(f"label_map.{column} maps no value")
        return v


class SplitSpec(_Strict):
    ratios: list[float] = Field(default_factory=lambda: [0.7, 0.15, 0.15], description="train/val/test by patient")
    stratify: str | None = Field(None, description="patient-level stratification column")
    folds: int = Field(0, ge=0, description="k > 1: patient-level k-fold CV; `fold` is the test fold")
    fold: int = Field(0, ge=0)
    val_fraction: float = Field(0.15, gt=0, lt=1, description="k-fold: share of training patients used for val")
    column: str | None = Field(None, description="use this manifest column (train/val/test) as the split")

    @model_validator(mode="after")
    def _fold_in_range(self) -> "SplitSpec":
        if self.folds == 1:
            raise ValueError("folds must be 0 (ratio split) or >= 2")
        if self.folds and self.fold >= self.folds:
            raise ValueError(f"fold must be < folds ({self.folds})")
        return self


class PatchSpec(_Strict):
    """Patch input mode (Oh, Park & Ye 2020; issue #18): the lung-masked image resized to ``canvas``×``canvas``,
    ``size``-px patches centred on lung pixels (drawn jointly, :mod:`cxrlab.patches`). Training draws
    ``train_count`` fresh random patches per image at every step; validation and prediction cut ``count``
    patches per image (seeded by ``seed`` and the image's lung mask, so predictions repeat) and aggregate
    them per image by majority vote (``vote``, as published) or mean probability (``mean``)."""

    canvas: int = Field(1024, ge=16, le=4096, description="side of the lung-masked square canvas (published: 1024)")
    size: int = Field(224, ge=16, le=2048, description="patch side in canvas pixels, the model's input size "
                      "(published: 224)")
    train_count: int = Field(1, ge=1, le=1024, description="random patches per image per training step")
    count: int = Field(100, ge=1, le=4096, description="patches per image at validation and prediction "
                       "(published: 100)")
    aggregate: Literal["vote", "mean"] = Field("vote", description="patch predictions -> image: majority vote "
                                               "(published) or mean probability")
    seed: int = Field(0, description="seed of the inference patches (with each image's lung mask)")

    @model_validator(mode="after")
    def _fits(self) -> "PatchSpec":
        if self.size > self.canvas:
            raise ValueError(f"patch size {self.size} is larger than the canvas {self.canvas}: use a smaller "
                             "input.patches.size or a larger input.patches.canvas")
        return self


class InputSpec(_Strict):
    size: int = Field(224, ge=16, le=2048, description="square model input after resize-and-pad (patch mode: the "
                      "patch size, set from input.patches.size when omitted)")
    roi: str = Field("none", description="ROI scheme of cxrlab.anatomy (none, lung, midline, lungs, image+mask)")
    roi_options: dict[str, Any] = Field(default_factory=dict)
    clahe: str | bool = Field(False, description="False, True (= 'True_.04_8') or 'True_<cl>_<gs>': the ICU paper's "
                              "histeq, cv2 CLAHE with clipLimit = cl·gs·gs on a gs×gs tile grid (applied before the "
                              "ROI)")
    sharpen: bool = Field(False, description="unsharp masking before the ROI")
    augment: list[str | dict[str, Any]] = Field(
        default_factory=list, description="random training transforms (cxrlab.transforms specs)")
    mask_columns: list[str] | None = Field(None, description="mask columns to read (default: those the ROI needs)")
    patches: PatchSpec | None = Field(None, description="patch input mode: random lung-centred patches in "
                                      "training, K patches aggregated per image at inference (see PatchSpec)")

    @model_validator(mode="before")
    @classmethod
    def _patch_size_default(cls, data: Any) -> Any:
        # in patch mode the model sees patches: input.size is the patch size, filled in when the recipe omits it
        if isinstance(data, dict) and isinstance(data.get("patches"), dict) and "size" not in data \
                and "size" in data["patches"]:
            data = {**data, "size": data["patches"]["size"]}
        return data

    @model_validator(mode="after")
    def _patch_mode_consistent(self) -> "InputSpec":
        p = self.patches
        if p is None:
            return self
        if self.size != p.size:
            raise ValueError(f"input.size={self.size} but input.patches.size={p.size}: in patch mode the model "
                             "input is the patch (omit input.size or make them equal)")
        if self.roi != "none":
            raise ValueError(f"input.roi={self.roi} cannot be combined with input.patches: patch mode does its own "
                             "lung masking (use roi: none)")
        if self.augment:
            raise ValueError("input.augment is not supported with input.patches yet (the random patches are the "
                             "training-time variation)")
        return self


class ModelSpec(_Strict):
    backbone: str = "resnet18"
    weights: str = Field("none", description="none | imagenet | xrv:<name> | file:<path> | run:<pretrain run>")
    dropout: float = Field(0.0, ge=0, lt=1)
    # run: backbones that saw a val/test patient are refused (cxrlab.pretrain.guard) unless this is true
    allow_pretrain_overlap: bool = False


class StageSpec(_Strict):
    epochs: int = Field(10, ge=0)
    train_blocks: int | Literal["all"] = Field(
        "all", description="backbone stages trained (counted from the top); 0 = head only on a frozen backbone")
    lr: float = Field(1e-3, gt=0)


class TrainSpec(_Strict):
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    stages: list[StageSpec] = Field(default_factory=lambda: [StageSpec()])
    balancing: str = Field("none", description="none | class_weight | sampler | under | over | double | focal")
    focal_gamma: float = Field(2.0, ge=0)
    # retired: ``double`` now follows the stages (stage 1 balanced, later stages on all data); the field stays so
    # run directories written before (their recipe.yaml lists it) still load, and training refuses other values
    double_balanced_fraction: float = Field(0.5, gt=0, le=1,
                                            description="retired (must stay 0.5): double balances stage 1 only")
    plateau_patience: int = Field(7, ge=0)
    plateau_factor: float = Field(0.1, gt=0, lt=1)
    early_stopping_patience: int = Field(10, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # YAML reads on/off as booleans, so both spellings are accepted
    channels_last: Literal["auto"] | bool = "auto"
    feature_cache: Literal["auto"] | bool = Field("auto", description="cache frozen-part outputs when nothing random "
                                                                     "precedes them (false: never)")
    cache_dir: str | None = Field(None, description="default: $CXRLAB_HOME/cache")
    augment_views: int = Field(0, ge=0, description="with random augmentation and a frozen part: K seeded "
                               "augmented views per training item, passed through the frozen part once and cached; "
                               "each draw takes one of its item's K views (0: a fresh augmentation every draw, "
                               "nothing cached)")
    num_workers: int = Field(2, ge=0, description="processes preparing images (keep both cores busy)")
    threads: int = Field(1, ge=1, description="torch intra-op threads (1: on a shared CPU more threads spin and stall)")
    side: Literal["right", "left"] | None = Field(
        None, description="per-lung ROI (lung, midline): train and early-stop on this lung's inputs only, an "
        "independent one-sided model balanced on its own lung's grade (predictions are still written for both)")

    @field_validator("stages")
    @classmethod
    def _some_stage(cls, v: list[StageSpec]) -> list[StageSpec]:
        if not v:
            raise ValueError("at least one stage is needed")
        return v


class TrackingSpec(_Strict):
    mlflow: bool = Field(False, description="log params, per-epoch metrics and run files to MLflow (pip install "
                                            "'cxrlab[mlflow]')")
    uri: str | None = Field(None, description="tracking store; default: $MLFLOW_TRACKING_URI when it is local, "
                                              "else file:<run_dir>/mlruns (never a server unless named here)")
    experiment: str = Field("cxrlab", min_length=1, description="MLflow experiment name")
    checkpoints: bool = Field(False, description="also log checkpoints/best.pt as an artifact")


class Recipe(_Strict):
    name: str
    description: str = ""
    reference: str = Field("", description="the publication this recipe follows")
    seed: int = 0
    data: DataSpec = Field(default_factory=DataSpec)
    split: SplitSpec = Field(default_factory=SplitSpec)
    input: InputSpec = Field(default_factory=InputSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    tasks: list[dict[str, Any]] = Field(description="task specs: {kind: diagnosis|binary|opacity|severity|zones, ...}")
    train: TrainSpec = Field(default_factory=TrainSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)

    @field_validator("tasks")
    @classmethod
    def _tasks_known(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from cxrlab.tasks import TaskSet

        if not v:
            raise ValueError("at least one task is needed")
        for i, spec in enumerate(v):
            try:  # unknown kinds or options fail here, with their name
                TaskSet.from_config([spec])
            except ConfigError as exc:
                raise ValueError(f"tasks.{i}: {exc}") from None
        return v

    @field_validator("train")
    @classmethod
    def _balancing_known(cls, v: TrainSpec) -> TrainSpec:
        from cxrlab.train.balancing import BALANCING

        try:
            BALANCING.get(v.balancing)
        except ConfigError as exc:
            raise ValueError(f"balancing: {exc}") from None
        return v

    @field_validator("input")
    @classmethod
    def _roi_known(cls, v: InputSpec) -> InputSpec:
        from cxrlab.anatomy.roi import ROI_SCHEMES

        try:
            ROI_SCHEMES.get(v.roi)
        except ConfigError as exc:
            raise ValueError(f"roi: {exc}") from None
        return v
