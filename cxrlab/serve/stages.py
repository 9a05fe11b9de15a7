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

import contextlib
import json
import logging
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml

from cxrlab.errors import ConfigError
from cxrlab.registry import Registry
from cxrlab.utils import file_sha256

logger = logging.getLogger(__name__)

#: role -> stage class (constructor ``(run_dir, *, backend, cam_method, heatmap_pass)``)
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
    """The card of one run directory: recipe, training data, validation metrics (with bootstrap CIs once the
    run has been evaluated), intended use and limitations (recipe ``card:`` section, else the role's defaults)."""
    recipe = _read_yaml(run_dir / "recipe.yaml")
    card = recipe.get("card") if isinstance(recipe.get("card"), dict) else {}
    return {
        "role": role,
        "name": run_dir.name,
        "version": run_version(run_dir),
        "recipe": recipe,
        "training_data": {"splits": _split_summary(run_dir), "data": recipe.get("data")},
        **_metrics(run_dir),
        "intended_use": card.get("intended_use", DEFAULT_INTENDED_USE[role]),
        "limitations": list(card.get("limitations", [])) + COMMON_LIMITATIONS,
        **extra,
    }


def _metrics(run_dir: Path) -> dict[str, Any]:
    """Validation metrics for the card: ``cxrlab evaluate``'s ``evaluation/metrics.json`` (bootstrap CIs) when
    the run has been evaluated, else the trainer's ``metrics.json``; curves are left out to keep cards small."""
    for rel in ("evaluation/metrics.json", "metrics.json"):
        if (run_dir / rel).is_file():
            return {"validation_metrics": _compact(_read_json(run_dir / rel)), "metrics_source": rel}
    return {"validation_metrics": {}, "metrics_source": None}


def _compact(obj: Any, max_list: int = 16) -> Any:
    if isinstance(obj, dict):
        return {k: _compact(v, max_list) for k, v in obj.items()
                if not (isinstance(v, list) and len(v) > max_list)}
    if isinstance(obj, list):
        return [_compact(v, max_list) for v in obj]
    return obj


def run_version(run_dir: Path) -> str:
    """Run name + the first 12 hex digits of its best (else last) checkpoint's SHA-256."""
    for name in ("best.pt", "last.pt"):
        ckpt = run_dir / "checkpoints" / name
        if ckpt.is_file():
            return f"{run_dir.name}@{file_sha256(ckpt)[:12]}"
    return f"{run_dir.name}@unversioned"


class Stage(ABC):
    """Base of every stage: role, run directory, card, version; ``run`` returns seconds per step."""

    role = ""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self._version = run_version(self.run_dir)

    def version(self) -> str:
        return self._version

    def card(self) -> dict[str, Any]:
        card = model_card(self.role, self.run_dir)
        engine = getattr(self, "fast", None) or getattr(self, "engine", None)
        if engine is not None and not isinstance(getattr(engine, "engine", ""), str):
            engine = engine.engine  # through a FeatureTap to the backend module
        if engine is not None:
            # which engine runs the network; under backend "fastest", what was timed and why it was chosen
            card["engine"] = {"name": getattr(engine, "engine", None), **({"choice": engine.choice}
                                                                       if hasattr(engine, "choice") else {})}
        return card

    @abstractmethod
    def run(self, cases: list[Any], *, heatmap: bool) -> dict[str, float]:
        """Fill the cases' masks / report sections; return seconds per named step for the whole batch."""


class Timer:
    """Accumulates wall time per named step: ``with timer("preprocess"): ...`` (steps may nest)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


#: how a classifier's heatmap is computed: "auto" = from the forward pass where Grad-CAM reduces to CAM (a global
#: average pool + one linear head), the backward pass elsewhere; "backward" = always Grad-CAM's backward pass
HEATMAP_PASSES = ("auto", "backward")


def create_stage(role: str, run_dir: str | Path, *, backend: str, cam_method: str = "gradcam",
                 heatmap_pass: str = "auto") -> Stage:
    """The stage of one run directory in ``role``. A diagnosis run that no single network stands for (an ensemble
    run, a patch-mode run) gets :class:`cxrlab.serve.member_stage.MemberModelsStage`."""
    if role == "diagnosis" and _served_by_members(Path(run_dir)):
        from cxrlab.serve.member_stage import MemberModelsStage

        return MemberModelsStage(Path(run_dir), backend=backend, cam_method=cam_method, heatmap_pass=heatmap_pass)
    return STAGES.create(role, Path(run_dir), backend=backend, cam_method=cam_method, heatmap_pass=heatmap_pass)


def _served_by_members(run_dir: Path) -> bool:
    recipe = _read_yaml(run_dir / "recipe.yaml")
    return recipe.get("kind") == "ensemble" or bool((recipe.get("input") or {}).get("patches"))


def create_stages(runs: dict[str, Path], *, backend: str, cam_method: str = "gradcam",
                  heatmap_pass: str = "auto") -> list[Stage]:
    """One stage per configured role. A severity run without a configured lung model brings its own Stage I."""
    stages = [create_stage(role, path, backend=backend, cam_method=cam_method, heatmap_pass=heatmap_pass)
              for role, path in runs.items()]
    for stage in list(stages):
        if stage.role == "opacity" and "lung" not in runs:
            if stage.lung_run is None:
                raise ConfigError(f"{stage.run_dir}: an opacity model needs lung masks: configure a lung model")
            lung = STAGES.create("lung", stage.lung_run, backend=backend, cam_method=cam_method,
                                 heatmap_pass=heatmap_pass)
            lung.use_output(stage.lung_output)  # the severity run's own Stage I, drawn as it was fitted
            stages.append(lung)
        if getattr(stage, "needs_masks", False) and "lung" not in runs:
            raise ConfigError(f"{stage.run_dir}: this diagnosis run needs lung masks: configure a lung model")
    _match_stage_one(stages)
    return stages


def _match_stage_one(stages: list[Stage]) -> None:
    """The severity scoring was fitted on one Stage I (lung run and lung output). When the configured lung model is
    that run, it draws the lungs in the output the scoring was fitted with; when it is another run, the severity
    scores rest on lungs they were not fitted with: said in the log and on both model cards."""
    lung = next((s for s in stages if s.role == "lung"), None)
    opacity = next((s for s in stages if s.role == "opacity"), None)
    if lung is None or opacity is None or opacity.lung_run is None:
        return
    if Path(lung.run_dir).resolve() == Path(opacity.lung_run).resolve():
        drawn = lung.segmenter.convention or "shared"
        if opacity.lung_output is not None and drawn != opacity.lung_output:
            lung.use_output(opacity.lung_output)
            lung.output_note = (f"lungs drawn as {opacity.lung_output!r} (the run's default is {drawn!r}): the "
                                f"severity run {opacity.run_dir} was fitted with that output")
        return
    opacity.stage_one_note = (f"severity scoring fitted with Stage I {opacity.lung_run} "
                              f"({opacity.lung_output or 'shared'} lungs), served with {lung.run_dir}: zone and "
                              "grade thresholds may not carry over")
    logger.warning("%s", opacity.stage_one_note)


def detect_role(run_dir: str | Path) -> str:
    """Which service role a run directory plays, from its recipe (``cxrlab serve RUN...``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} does not exist")
    recipe = _read_yaml(run_dir / "recipe.yaml")
    if not recipe:
        raise ConfigError(f"{run_dir}: no recipe.yaml; not a cxrlab run directory")
    role = recipe.get("service_role") or _role_from_recipe(recipe)
    if role not in STAGES:
        raise ConfigError(f"{run_dir}: cannot tell which service role this run plays; use --config")
    return role


def _role_from_recipe(recipe: dict[str, Any]) -> str | None:
    for role in STAGES.list():
        if STAGES.get(role).matches(recipe):
            return role
    return None


class _SegmenterStage(Stage):
    """A segmentation run (:class:`cxrlab.anatomy.LungSegmenter` covers lung and disease models alike)."""

    def __init__(self, run_dir: Path, *, backend: str, cam_method: str = "gradcam", heatmap_pass: str = "auto"):
        import torch

        from cxrlab.anatomy.predict import LungSegmenter
        from cxrlab.export import apply_backend
        from cxrlab.export.onnx import fresh_onnx
        from cxrlab.severity.engine import segmenter_agreement

        super().__init__(run_dir)
        self.model_dir = Path(run_dir)
        # precision "fp32": the backend decides the arithmetic, not the segmenter's own autocast.
        self.segmenter = LungSegmenter.from_run(run_dir, precision="fp32")
        self.sample = self.segmenter.example_input()  # a phantom film: engines judged by the masks they draw
        self.module, self.engine = apply_backend(self.segmenter, "model", backend, sample=self.sample,
                                                 onnx_path=fresh_onnx(self.run_dir),
                                                 agree=segmenter_agreement(self.segmenter))

    @classmethod
    def matches(cls, recipe: dict[str, Any]) -> bool:
        return "arch" in recipe and "encoder" in recipe and cls.target in (recipe.get("targets") or [])

    def modules(self) -> list[tuple[str, Any, Any, Path]]:
        """(name, fp32 module, sample input, ONNX path) for export and FLOP counts."""
        return [(self.role, self.module, self.sample, self.model_dir / "model.onnx")]

    def _predict(self, images: list[np.ndarray], lung_masks: list[np.ndarray] | None,
                 timer: Timer, step: str, lungs_only: bool = False) -> list[dict[str, np.ndarray]]:
        before = self.engine.seconds
        with timer(step):
            out = self.segmenter.predict_batch(images, lung_masks, lungs_only=lungs_only)
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
        for case, masks in zip(cases, self._predict([c.image for c in cases], None, timer, "lung_segmentation",
                                                    lungs_only=True)):  # the service shows no heart mask
            for key in (schema.KEY_LUNG_MASK, schema.KEY_RIGHT_MASK, schema.KEY_LEFT_MASK):
                case.masks[key] = masks[key]
        return timer.seconds

    def use_output(self, output: str | None) -> None:
        """Draw the lungs as ``output`` (a convention of the run, or ``shared``/None) instead of the run's default."""
        self.segmenter.use_convention(output)

    def card(self) -> dict[str, Any]:
        note = {"lung_output_note": self.output_note} if getattr(self, "output_note", None) else {}
        return super().card() | {"lung_output": self.segmenter.convention or "shared"} | note


@STAGES.register("opacity")
class OpacityStage(_SegmenterStage):
    """Disease (opacity) segmentation, then severity scores on the lung zones.

    The run is a severity run directory (``cxrlab.severity.train_severity``: ``severity.json``,
    ``scoring.json``, ``disease/``) or a bare disease-segmentation run (default scoring parameters).
    """

    role = "opacity"
    target = "mask_disease"

    def __init__(self, run_dir: Path, *, backend: str, cam_method: str = "gradcam", heatmap_pass: str = "auto"):
        from cxrlab.severity.config import ScoringParams
        from cxrlab.severity.pipeline import PIPELINE_FILE, SCORING_FILE

        run_dir = Path(run_dir)
        self.lung_run: Path | None = None
        self.lung_output: str | None = None  # the Stage I output the scoring was fitted with, when recorded
        self.scoring = ScoringParams()
        if (run_dir / PIPELINE_FILE).is_file():
            spec = json.loads((run_dir / PIPELINE_FILE).read_text())
            self.lung_output = spec.get("lung_output", "shared")
            disease, lung = (Path(spec[k]) for k in ("disease_run", "lung_run"))
            self.lung_run = lung if lung.is_absolute() else run_dir / lung
            self.scoring = ScoringParams.load(run_dir / SCORING_FILE)
            seg_dir = disease if disease.is_absolute() else run_dir / disease
        else:
            seg_dir = run_dir
        super().__init__(seg_dir, backend=backend, cam_method=cam_method, heatmap_pass=heatmap_pass)
        self.run_dir = run_dir  # the card describes the severity run, the version names its disease model
        if self.target not in self.segmenter.config.targets:
            raise ConfigError(f"{run_dir}: not an opacity model (targets {self.segmenter.config.targets})")

    @classmethod
    def matches(cls, recipe: dict[str, Any]) -> bool:
        return ("lung_run" in recipe and "manifests" in recipe) or super().matches(recipe)

    def card(self) -> dict[str, Any]:
        note = {"stage_one_note": self.stage_one_note} if getattr(self, "stage_one_note", None) else {}
        return super().card() | {"scoring": self.scoring.model_dump(mode="json"), "disease_model": self.version(),
                                 "fitted_with_lung_output": self.lung_output,
                                 "fitted_with_lung_run": str(self.lung_run) if self.lung_run else None} | note

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


def to_image_frame(heat: np.ndarray, applied: list[dict[str, Any]]) -> np.ndarray | None:
    """Map a map on the model-input canvas back onto the uploaded image by undoing the recorded geometric steps
    (``meta["applied"]``); None when a step cannot be undone (e.g. the midline split records no geometry)."""
    import cv2

    from cxrlab.transforms import undo_resize_pad

    out = heat.astype(np.float32)
    for step in reversed(applied):
        name = step["name"]
        if name == "resize_pad":
            out = undo_resize_pad(out, step, is_mask=False)
        elif name == "resize":
            h, w = step["orig_shape"]
            out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)
        elif name == "crop_to_mask":
            y0, y1, x0, x1 = step["box"]
            canvas = np.zeros(step["orig_shape"], np.float32)
            canvas[y0:y1, x0:x1] = cv2.resize(out, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR) \
                if out.shape != (y1 - y0, x1 - x0) else out
            out = canvas
        elif name == "hflip":
            out = out[:, ::-1]
        elif name in ("clahe", "unsharp"):
            continue
        else:
            return None
    return out


class _ClassifierStage(Stage):
    """A trained classifier run, loaded with :func:`cxrlab.train.load_run` and fed exactly as in training (the
    run's input pipeline: intensity steps, ROI, resize-and-pad), with the lung stage's masks when its ROI needs
    them. Preprocessing is replayed step by step here (rather than ``RunModel.inputs_for``) to keep the lung
    mask in the model's frame (for concordance) and the recorded geometry (to map heatmaps back)."""

    task_kind = ""

    def __init__(self, run_dir: Path, *, backend: str, cam_method: str = "gradcam", heatmap_pass: str = "auto"):
        import torch

        from cxrlab.export import apply_backend, create_backend
        from cxrlab.export.cam import CAM_ONNX, FeatureTap
        from cxrlab.export.onnx import fresh_onnx
        from cxrlab.train import load_run

        super().__init__(run_dir)
        self.run_model = load_run(run_dir)
        if self.run_model.pipeline.patches is not None:
            raise ConfigError(f"{run_dir} is a patch-mode run (input.patches): the service does not serve patch runs "
                              "yet (use `cxrlab predict` / `cxrlab explain`)")
        self.run_model.precision = "fp32"  # the backend decides the arithmetic, not the run's training autocast
        self.pipeline, self.tasks = self.run_model.pipeline, self.run_model.tasks
        self.target_layers = self.run_model.cam_target_layers()
        self.cam_method = cam_method
        if heatmap_pass not in HEATMAP_PASSES:
            raise ConfigError(f"heatmap_pass {heatmap_pass!r}: choose one of {', '.join(HEATMAP_PASSES)}")
        self.heatmap_pass = heatmap_pass
        self.sample = self._example_input()
        self.task = self._task()
        self.cam_weight = self._forward_cam_weight()
        if self.cam_weight is None:
            self.module, self.fast = apply_backend(self.run_model, "model", backend, sample=self.sample,
                                                   onnx_path=fresh_onnx(self.run_dir))
            self.exported = self.module
        else:
            # Heatmaps from the forward pass: the backend runs the net with its last feature map as a second
            # output (one backbone pass, any engine); the tap hands the heads to the run's decoding as usual.
            from cxrlab.export.cam import CamFeatureModel

            self.module = self.run_model.model
            self.exported = CamFeatureModel(self.module)
            engine = create_backend(backend, self.exported, sample=self.sample,
                                    onnx_path=fresh_onnx(self.run_dir, CAM_ONNX))
            self.fast = FeatureTap(engine)
            self.run_model.model = self.fast

    def _forward_cam_weight(self) -> Any:
        """The head weight when this stage's heatmap can come from the forward pass (None: Grad-CAM backward)."""
        return None

    def _example_input(self) -> Any:
        """``(1, C, size, size)``: a phantom chest film (with its lungs, for lung ROIs) through the run's own input
        pipeline. ``fastest`` judges and times engines on it: on noise, a classifier's outputs and their rounding
        say little about a chest film's."""
        import torch

        from cxrlab.data import schema
        from cxrlab.data.phantom import render_sample

        spec = self.pipeline.spec
        film = render_sample("covid19", severity=0.5, size=max(spec.size, 64), seed=0)
        sample = {k: film[k] for k in (schema.KEY_IMAGE, schema.KEY_LUNG_MASK, schema.KEY_RIGHT_MASK,
                                       schema.KEY_LEFT_MASK)}
        sample[schema.KEY_META] = {"image": "phantom example"}
        x = np.ascontiguousarray(self.pipeline.prepare_with_lungs(sample)[0][0], dtype=np.float32)
        expected = (self.pipeline.in_chans, spec.size, spec.size)
        if x.shape != expected:  # a pipeline this check does not know: its own example shape is the contract
            raise ConfigError(f"{self.run_dir}: the input pipeline made a {x.shape} input, the model takes {expected}")
        return torch.from_numpy(x)[None]

    def _task(self) -> Any:
        for task in self.tasks.tasks:
            if task.kind == self.task_kind:
                return task
        raise ConfigError(f"{self.run_dir}: no {self.task_kind} task in this run "
                          f"(tasks: {[t.kind for t in self.tasks.tasks]})")

    @classmethod
    def matches(cls, recipe: dict[str, Any]) -> bool:
        if recipe.get("kind") == "ensemble":  # one task for the whole ensemble
            task = recipe.get("task")
            return isinstance(task, dict) and task.get("kind") == cls.task_kind
        tasks = recipe.get("tasks") or []
        return bool(tasks) and isinstance(tasks[0], dict) and tasks[0].get("kind") == cls.task_kind

    def modules(self) -> list[tuple[str, Any, Any, Path]]:
        """What the backend runs (the net, or the net with its feature-map output) and where its ONNX lives."""
        from cxrlab.export.cam import CAM_ONNX

        name = "model.onnx" if self.cam_weight is None else CAM_ONNX
        return [(self.role, self.exported, self.sample, self.run_dir / name)]

    def export_modules(self) -> list[tuple[str, Any, Any, Path]]:
        """What ``cxrlab export`` writes: the plain classifier graph (``model.onnx``, for use outside cxrlab) and,
        when the heatmap comes from the forward pass, the graph the backend runs (``model_cam.onnx``)."""
        plain = [(self.role, self.module, self.sample, self.run_dir / "model.onnx")]
        return plain if self.cam_weight is None else plain + [(f"{self.role}+cam", *self.modules()[0][1:])]

    def prepare(self, case: Any) -> list[tuple[np.ndarray, np.ndarray | None, list[dict[str, Any]]]]:
        """``[(C×H×W input, lung mask in the same frame or None, applied geometric steps)]`` per model input."""
        from cxrlab.data import schema

        sample: dict[str, Any] = {schema.KEY_IMAGE: case.image, schema.KEY_META: {"image": "upload"}}
        for key in (schema.KEY_LUNG_MASK, schema.KEY_RIGHT_MASK, schema.KEY_LEFT_MASK):
            if key in case.masks:
                sample[key] = case.masks[key]
        if self.pipeline.needs_masks and schema.KEY_RIGHT_MASK not in sample:
            raise ConfigError(f"{self.run_dir}: input.roi={self.pipeline.spec.roi} needs lung masks: "
                              "configure a lung model")
        return self.pipeline.prepare_with_lungs(sample)

    def forward(self, cases: list[Any], timer: Timer) -> tuple[Any, list[list[Any]], dict[str, np.ndarray]]:
        """Prepare, run the backend, decode with the run's tasks: (input batch, per-case inputs, decoded)."""
        import torch

        from cxrlab.errors import InputError

        with timer(f"{self.role}.preprocess"):
            prepared = []
            for case in cases:
                try:
                    prepared.append(self.prepare(case))
                except InputError as exc:  # e.g. a lung ROI on an image where no lung was found
                    raise InputError("upload", f"{self.role} model cannot read this image: {exc.reason}") from None
            flat = [item for per_case in prepared for item in per_case]
            item_row = np.repeat(np.arange(len(prepared)), [len(p) for p in prepared])
            item_side = np.concatenate([np.arange(len(p)) for p in prepared])
            x = torch.from_numpy(np.stack([a for a, _, _ in flat]))
        before = self.fast.seconds
        logits = self.run_model.logits(x)  # through the backend wrapper that replaced run_model.model
        timer.seconds[f"{self.role}.network"] = self.fast.seconds - before
        decoded = self.tasks.decode(logits, item_row, item_side, len(prepared))
        return x, prepared, decoded

    @staticmethod
    def outputs_of(decoded: dict[str, np.ndarray], i: int) -> dict[str, Any]:
        """Every decoded column of case ``i`` (probabilities, predictions, per-side grades)."""
        return {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in decoded.items()}


@STAGES.register("diagnosis")
class DiagnosisStage(_ClassifierStage):
    """Class probabilities; with heatmaps on, Grad-CAM of the top class (one backward pass, PyTorch fp32) mapped
    back onto the image, and its concordance with the lungs (HCS of :mod:`cxrlab.explain`)."""

    role = "diagnosis"
    task_kind = "diagnosis"

    def _forward_cam_weight(self) -> Any:
        # Only Grad-CAM reduces to CAM (GAP + one linear layer, checked on an example); other CAM methods and
        # other heads keep the backward pass, in PyTorch fp32.
        if self.cam_method != "gradcam" or self.heatmap_pass == "backward":
            return None
        from cxrlab.export.cam import forward_cam_weight

        return forward_cam_weight(self.run_model.model, self.task.name, self.sample, self.target_layers)

    def run(self, cases: list[Any], *, heatmap: bool) -> dict[str, float]:
        timer = Timer()
        with timer("diagnosis"):
            x, prepared, decoded = self.forward(cases, timer)
        classes = list(self.task.classes)
        for i, case in enumerate(cases):
            probs = {c: float(decoded[f"prob_{c}"][i]) for c in classes}
            case.report["diagnosis"] = {"probabilities": probs, "predicted": max(probs, key=probs.get),
                                        "outputs": self.outputs_of(decoded, i)}
        if heatmap:
            with timer("heatmap"):
                self._heatmaps(cases, x, prepared)
        return timer.seconds

    def _heatmaps(self, cases: list[Any], x: Any, prepared: list[list[Any]]) -> None:
        from cxrlab.explain import OutputTarget, compute_cam, heatmap_concordance, lung_fraction
        from cxrlab.explain.heatmap import rescale
        # eval() on the wrapper: compute_cam restores the wrapper's own training flag afterwards, and a fresh
        # nn.Module starts in training mode, which would switch BatchNorm to batch statistics for good.
        head_module = self.module.as_classifier(self.task.name).eval()
        classes = list(self.task.classes)
        targets, owners = [], []
        for i, (case, per_case) in enumerate(zip(cases, prepared)):
            k = classes.index(case.report["diagnosis"]["predicted"])
            targets += [OutputTarget(k)] * len(per_case)
            owners += [i] * len(per_case)
        if self.cam_weight is not None:
            from cxrlab.explain.forward import forward_cam

            maps = rescale(forward_cam(self.fast.features, self.cam_weight, [t.k for t in targets],
                                       size=tuple(x.shape[-2:])))
        else:
            maps = rescale(compute_cam(head_module, x, self.cam_method, self.target_layers, targets))
        start = 0
        for i, (case, per_case) in enumerate(zip(cases, prepared)):
            own = maps[start:start + len(per_case)]
            start += len(per_case)
            hcs = [heatmap_concordance(m, lungs) for m, (_, lungs, _) in zip(own, per_case)
                   if lungs is not None and lungs.any()]
            frames = [to_image_frame(m, applied) for m, (_, _, applied) in zip(own, per_case)]
            if all(f is not None and f.shape == case.image.shape for f in frames):
                case.heatmap = np.max(np.stack(frames), axis=0)
            finite = [h for h in hcs if np.isfinite(h)]
            case.report["heatmap"] = {
                "method": self.cam_method, "target": case.report["diagnosis"]["predicted"],
                "computed": "forward pass (CAM = Grad-CAM for this GAP + linear head)"
                if self.cam_weight is not None else "backward pass (PyTorch fp32)",
                "concordance": float(np.mean(finite)) if finite else None,
                "chance_level": float(np.mean([lung_fraction(l) for _, l, _ in per_case if l is not None]))
                if any(l is not None for _, l, _ in per_case) else None,
                "shown_on_image": case.heatmap is not None,
            }


@STAGES.register("icu")
class IcuStage(_ClassifierStage):
    """ICU-admission risk from a binary-outcome run."""

    role = "icu"
    task_kind = "binary"

    def run(self, cases: list[Any], *, heatmap: bool) -> dict[str, float]:
        timer = Timer()
        with timer("icu"):
            _, _, decoded = self.forward(cases, timer)
        for i, case in enumerate(cases):
            case.report["icu"] = {"risk": float(decoded[f"prob_{self.task.column}"][i]),
                                  "outcome": self.task.column, "outputs": self.outputs_of(decoded, i)}
        return timer.seconds
