"""One stage per configured run directory, built from the other packages' library APIs only.

- ``lung``: :class:`cxrlab.anatomy.LungSegmenter` → lung masks (patient right / left), contours, quality flags.
- ``opacity``: a disease (opacity) segmenter → disease mask; with lung masks and
  :func:`cxrlab.anatomy.lung_zones`, :func:`cxrlab.severity.score_masks` gives per-lung grades, zone scores and
  totals.
- ``diagnosis``: a trained classifier run (:func:`cxrlab.train.load_run`) → class probabilities; Grad-CAM
  (:mod:`cxrlab.explain`) of the top class and its concordance with the lungs.
- ``icu``: a trained binary classifier run → ICU-admission risk.

Every stage swaps its network for the configured inference backend (:func:`cxrlab.export.apply_backend`) and
keeps the original fp32 module for Grad-CAM. A stage also writes the model card shown by ``GET /v1/models``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cxrlab.errors import ConfigError
from cxrlab.registry import Registry
from cxrlab.utils import file_sha256

#: role -> stage class (constructor ``(run_dir, *, backend, cam_method)``)
STAGES: Registry[type] = Registry("service stage")

DEFAULT_INTENDED_USE = {
    "lung": "Outline the lungs on frontal chest radiographs as the first step of severity scoring and as the "
            "reference region for heatmap concordance. Research use only.",
    "opacity": "Delineate lung opacities on frontal chest radiographs to compute per-lung and per-zone "
               "involvement scores. Research use only.",
    "diagnosis": "Estimate probabilities of radiographic findings on frontal chest radiographs for research "
                 "on decision support. Research use only, not for diagnosis.",
    "icu": "Estimate the risk of ICU admission from a frontal chest radiograph for research on triage. "
           "Research use only, not for clinical decisions.",
}
COMMON_LIMITATIONS = [
    "Not a medical device; outputs have not been validated prospectively and must not guide patient care.",
    "Trained and validated on the data summarised below only; performance on other hospitals, devices, "
    "populations (e.g. children vs adults) and lateral views is unknown.",
    "Public chest X-ray collections carry source shortcuts (each class dominated by one source), so "
    "reported metrics may overstate performance on new data.",
]


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def _split_summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "split.csv"
    if not path.is_file():
        return {}
    import pandas as pd

    df = pd.read_csv(path)
    out: dict[str, Any] = {}
    for split, part in df.groupby("split"):
        out[str(split)] = {"images": int(len(part)),
                           "patients": int(part["patient_id"].nunique()) if "patient_id" in part else None}
    return out


def model_card(role: str, run_dir: Path, **extra: Any) -> dict[str, Any]:
    """The card of one run directory: recipe, training data, validation metrics (with their CIs as stored in
    metrics.json), intended use and limitations (recipe ``card:`` section, else the role's defaults)."""
    recipe = _read_yaml(run_dir / "recipe.yaml")
    card = recipe.get("card") if isinstance(recipe.get("card"), dict) else {}
    return {
        "role": role,
        "name": run_dir.name,
        "version": run_version(run_dir),
        "recipe": recipe,
        "training_data": {"splits": _split_summary(run_dir), "data": recipe.get("data")},
        "validation_metrics": _read_json(run_dir / "metrics.json"),
        "intended_use": card.get("intended_use", DEFAULT_INTENDED_USE[role]),
        "limitations": list(card.get("limitations", [])) + COMMON_LIMITATIONS,
        **extra,
    }


def run_version(run_dir: Path) -> str:
    """Run name + the first 12 hex digits of its best (else last) checkpoint's SHA-256."""
    for name in ("best.pt", "last.pt"):
        ckpt = run_dir / "checkpoints" / name
        if ckpt.is_file():
            return f"{run_dir.name}@{file_sha256(ckpt)[:12]}"
    return f"{run_dir.name}@unversioned"


class Stage:
    """Base of every stage: role, run directory, card, version; ``run`` returns seconds per step."""

    role = ""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._version = run_version(self.run_dir)

    def version(self) -> str:
        return self._version

    def card(self) -> dict[str, Any]:
        return model_card(self.role, self.run_dir)

    def run(self, cases: list[Any], *, heatmap: bool) -> dict[str, float]:
        raise NotImplementedError


class Timer:
    """Accumulates wall time per named step: ``with timer("preprocess"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._name = ""
        self._t0 = 0.0

    def __call__(self, name: str) -> "Timer":
        self._name = name
        return self

    def __enter__(self) -> "Timer":
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds[self._name] = self.seconds.get(self._name, 0.0) + time.perf_counter() - self._t0


def create_stages(runs: dict[str, Path], *, backend: str, cam_method: str = "gradcam") -> list[Stage]:
    """One stage per configured role. A severity run without a configured lung model brings its own Stage I."""
    stages = [STAGES.create(role, path, backend=backend, cam_method=cam_method) for role, path in runs.items()]
    for stage in list(stages):
        if stage.role == "opacity" and "lung" not in runs:
            if stage.lung_run is None:
                raise ConfigError(f"{stage.run_dir}: an opacity model needs lung masks: configure a lung model")
            stages.append(STAGES.create("lung", stage.lung_run, backend=backend, cam_method=cam_method))
    return stages


def detect_role(run_dir: str | Path) -> str:
    """Which service role a run directory plays, from its recipe (``cxrlab serve RUN...``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} does not exist")
    recipe = _read_yaml(run_dir / "recipe.yaml")
    if not recipe:
        raise ConfigError(f"{run_dir}: no recipe.yaml; not a cxrlab run directory")
    text = yaml.safe_dump(recipe).lower()
    role = recipe.get("service_role") or _role_from_recipe(recipe, text)
    if role not in STAGES:
        raise ConfigError(f"{run_dir}: cannot tell which service role this run plays; use --config")
    return role


def _role_from_recipe(recipe: dict[str, Any], text: str) -> str | None:
    for role in STAGES.list():
        if STAGES.get(role).matches(recipe, text):
            return role
    return None


def fresh_onnx(run_dir: Path) -> Path | None:
    """``run_dir/model.onnx`` when ``cxrlab export`` wrote it after the checkpoint, else None (re-export)."""
    onnx_path = run_dir / "model.onnx"
    ckpts = [p for p in (run_dir / "checkpoints").glob("*.pt")] if (run_dir / "checkpoints").is_dir() else []
    if onnx_path.is_file() and all(onnx_path.stat().st_mtime >= p.stat().st_mtime for p in ckpts):
        return onnx_path
    return None


class _SegmenterStage(Stage):
    """A segmentation run (:class:`cxrlab.anatomy.LungSegmenter` covers lung and disease models alike)."""

    def __init__(self, run_dir: Path, *, backend: str, cam_method: str = "gradcam"):
        import torch

        from cxrlab.anatomy.predict import LungSegmenter
        from cxrlab.export import apply_backend

        super().__init__(run_dir)
        # precision "fp32": the backend decides the arithmetic, not the segmenter's own autocast.
        self.segmenter = LungSegmenter.from_run(run_dir, precision="fp32")
        size = self.segmenter.config.size
        self.sample = torch.rand(1, self.segmenter.in_channels, size, size)
        self.module, self.engine = apply_backend(self.segmenter, "model", backend, sample=self.sample,
                                                 onnx_path=fresh_onnx(self.run_dir))

    @classmethod
    def matches(cls, recipe: dict[str, Any], text: str) -> bool:
        return "arch" in recipe and "encoder" in recipe and cls.target in (recipe.get("targets") or [])

    def modules(self) -> list[tuple[str, Any, Any]]:
        """(name, fp32 module, sample input) for export and FLOP counts."""
        return [(self.role, self.module, self.sample)]

    def _predict(self, images: list[np.ndarray], lung_masks: list[np.ndarray] | None,
                 timer: Timer, step: str) -> list[dict[str, np.ndarray]]:
        before = self.engine.seconds
        with timer(step):
            out = self.segmenter.predict_batch(images, lung_masks)
        network = self.engine.seconds - before
        timer.seconds[f"{step}.network"] = network
        return out


@STAGES.register("lung")
class LungStage(_SegmenterStage):
    role = "lung"
    target = "mask_right_lung"

    def run(self, cases: list[Any], *, heatmap: bool) -> dict[str, float]:
        from cxrlab.data import schema

        timer = Timer()
        for case, masks in zip(cases, self._predict([c.image for c in cases], None, timer, "lung_segmentation")):
            for key in (schema.KEY_LUNG_MASK, schema.KEY_RIGHT_MASK, schema.KEY_LEFT_MASK):
                case.masks[key] = masks[key]
        return timer.seconds


@STAGES.register("opacity")
class OpacityStage(_SegmenterStage):
    """Disease (opacity) segmentation, then severity scores on the lung zones.

    The run is a severity run directory (``cxrlab.severity.train_severity``: ``severity.json``,
    ``scoring.json``, ``disease/``) or a bare disease-segmentation run (default scoring parameters).
    """

    role = "opacity"
    target = "mask_disease"

    def __init__(self, run_dir: Path, *, backend: str, cam_method: str = "gradcam"):
        from cxrlab.severity.config import ScoringParams
        from cxrlab.severity.pipeline import PIPELINE_FILE, SCORING_FILE

        run_dir = Path(run_dir)
        self.severity_run = run_dir
        self.lung_run: Path | None = None
        self.scoring = ScoringParams()
        if (run_dir / PIPELINE_FILE).is_file():
            import json

            spec = json.loads((run_dir / PIPELINE_FILE).read_text())
            disease, lung = (Path(spec[k]) for k in ("disease_run", "lung_run"))
            self.lung_run = lung if lung.is_absolute() else run_dir / lung
            self.scoring = ScoringParams.load(run_dir / SCORING_FILE)
            seg_dir = disease if disease.is_absolute() else run_dir / disease
        else:
            seg_dir = run_dir
        super().__init__(seg_dir, backend=backend, cam_method=cam_method)
        self.run_dir = run_dir  # the card describes the severity run, the version names its disease model
        if self.target not in self.segmenter.config.targets:
            raise ConfigError(f"{run_dir}: not an opacity model (targets {self.segmenter.config.targets})")

    @classmethod
    def matches(cls, recipe: dict[str, Any], text: str) -> bool:
        return ("lung_run" in recipe and "manifests" in recipe) or super().matches(recipe, text)

    def card(self) -> dict[str, Any]:
        return model_card(self.role, self.run_dir, scoring=self.scoring.model_dump(mode="json"),
                          disease_model=self.version())

    def run(self, cases: list[Any], *, heatmap: bool) -> dict[str, float]:
        from cxrlab.anatomy.geometry import lung_zones
        from cxrlab.data import schema
        from cxrlab.severity.scores import discard_outside_lungs, score_masks

        timer = Timer()
        if not all(schema.KEY_RIGHT_MASK in c.masks for c in cases):
            raise ConfigError("the opacity stage needs lung masks: configure a lung model")
        lungs = [c.masks[schema.KEY_LUNG_MASK] for c in cases] if self.segmenter.in_channels == 2 else None
        predicted = self._predict([c.image for c in cases], lungs, timer, "opacity_segmentation")
        s = self.scoring
        with timer("severity_scores"):
            for case, masks in zip(cases, predicted):
                right, left = case.masks[schema.KEY_RIGHT_MASK], case.masks[schema.KEY_LEFT_MASK]
                disease = discard_outside_lungs(masks[schema.KEY_DISEASE_MASK], right, left).astype(np.uint8)
                case.masks[schema.KEY_DISEASE_MASK] = disease
                if not right.any() and not left.any():
                    case.report["severity"] = None
                    case.report["quality"].setdefault("notes", []).append("no lung found: severity not scored")
                    continue
                # the scoring of cxrlab.severity.SeverityPipeline.score, on the service's lung masks
                rec = score_masks(disease, right, left, lung_zones(right, left, s.zone_strategy),
                                  zone_threshold=s.zone_threshold, brixia_cutpoints=s.brixia_cutpoints,
                                  source="upload")
                case.report["severity"] = severity_section(rec)
        return timer.seconds


def severity_section(rec: dict[str, float]) -> dict[str, Any]:
    """The report's severity block from :func:`cxrlab.severity.score_masks`'s flat record."""
    from cxrlab.data.schema import BRIXIA_ZONES

    return {
        "per_lung": {
            "patient_right": {"involvement": rec["involvement_right"], "grade": rec["grade_right"],
                              "extent": rec["extent_right"]},
            "patient_left": {"involvement": rec["involvement_left"], "grade": rec["grade_left"],
                             "extent": rec["extent_left"]},
        },
        "zones": {z: {"involvement": rec[f"zone_involvement_{z}"], "score": rec[f"brixia_{z}"]}
                  for z in BRIXIA_ZONES},
        "totals": {"brixia_global": rec["brixia_global"], "zone_count": rec["zone_count"],
                   "geographic_extent": rec["geographic_extent"], "opacity_score": rec["opacity_score"],
                   "involvement_lungs": rec["involvement_lungs"]},
    }
