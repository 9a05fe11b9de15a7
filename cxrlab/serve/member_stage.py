"""The service's diagnosis stage for runs that no single exported network stands for.

- an **ensemble run** (:mod:`cxrlab.train.ensemble`, FLANNEL): every learner's fold models predict, a learner's
  probability is the mean over its folds, and the run's fitted combiner (e.g. the neural weight module) combines
  the learners — exactly what ``cxrlab predict`` does on the run;
- a **patch-mode run** (``input.patches``): K lung-centred patches per image in one forward pass, aggregated by
  vote or mean, as in ``cxrlab predict``.

The members run in PyTorch fp32 whatever the configured backend (the card says so): an ensemble is many small
networks plus a combiner, and a patch model's input depends on the lung mask, so no one graph replaces them.
The heatmap is the mean of the members' maps for the predicted class, each mapped onto the uploaded image:
Grad-CAM for whole-image members, the probabilistic patch Grad-CAM (:mod:`cxrlab.patches.cam`) for patch
members; its concordance with the lungs (HCS) is computed on the image against the lung stage's mask.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cxrlab.data import schema
from cxrlab.errors import ConfigError, InputError
from cxrlab.serve.stages import Stage, Timer, to_image_frame


class MemberModelsStage(Stage):
    """Diagnosis from an ensemble run or a patch-mode run (see the module doc); built by
    :func:`cxrlab.serve.stages.create_stage` for those runs."""

    role = "diagnosis"

    def __init__(self, run_dir: Path, *, backend: str, cam_method: str = "gradcam", heatmap_pass: str = "auto"):
        from cxrlab.train.ensemble import is_ensemble_run, load_ensemble
        from cxrlab.train.predict import load_run

        super().__init__(run_dir)
        self.backend, self.cam_method = backend, cam_method
        if is_ensemble_run(self.run_dir):
            self.ensemble = load_ensemble(self.run_dir)
            self.members = self.ensemble.models  # learner name -> its fold models
            self.classes = list(self.ensemble.cfg.classes)
            self.kind = "ensemble"
        else:
            model = load_run(self.run_dir)
            self.ensemble, self.members = None, {"model": [model]}
            task = next((t for t in model.tasks.tasks if t.kind == "diagnosis"), None)
            if task is None:
                raise ConfigError(f"{self.run_dir}: no diagnosis task in this run")
            self.classes = list(task.classes)
            self.kind = "patch"
        for fold_models in self.members.values():
            for model in fold_models:
                model.precision = "fp32"
        self.needs_masks = any(m.pipeline.needs_masks for ms in self.members.values() for m in ms)
        self._version = self._member_version()

    def _member_version(self) -> str:
        """Run name + 12 hex digits over every member checkpoint (and the combiner): any retrained part shows."""
        digest = hashlib.sha256()
        files = [m.run_dir / "checkpoints" / "best.pt" for ms in self.members.values() for m in ms]
        if self.ensemble is not None:
            files.append(self.run_dir / "combiners" / f"{self.ensemble.cfg.combiner.name}.pkl")
        for path in files:
            digest.update(path.read_bytes())
        return f"{self.run_dir.name}@{digest.hexdigest()[:12]}"

    def card(self) -> dict[str, Any]:
        card = super().card()
        card["version"] = self.version()  # over the member checkpoints: the run itself has none
        card["engine"] = {"name": "torch-fp32", "requested": self.backend,
                          "why": f"a {self.kind} run is served by its member models in PyTorch "
                                 "(no single exported graph stands for it)"}
        card["members"] = {name: len(models) for name, models in self.members.items()}
        if self.ensemble is not None:
            card["combiner"] = self.ensemble.cfg.combiner.name
        return card

    def modules(self) -> list[tuple[str, Any, Any, Path]]:
        """Every member network (one patch for patch members), for ``cxrlab export`` and FLOP counts."""
        import torch

        out = []
        for name, models in self.members.items():
            for k, model in enumerate(models):
                spec = model.pipeline.patches
                size = spec.size if spec is not None else model.pipeline.spec.size
                sample = torch.rand(1, model.pipeline.in_chans, size, size)
                head = model.head_names[0]
                label = name if len(models) == 1 else f"{name}.fold{k}"
                out.append((f"{self.role}:{label}", model.model.as_classifier(head).eval(), sample,
                            model.run_dir / "model.onnx"))
        return out

    def _samples(self, cases: list[Any]) -> list[dict[str, Any]]:
        samples = []
        for case in cases:
            sample: dict[str, Any] = {schema.KEY_IMAGE: case.image, schema.KEY_META: {"image": "upload"}}
            for key in (schema.KEY_LUNG_MASK, schema.KEY_RIGHT_MASK, schema.KEY_LEFT_MASK):
                if key in case.masks:
                    sample[key] = case.masks[key]
            if self.needs_masks and schema.KEY_RIGHT_MASK not in sample and schema.KEY_LUNG_MASK not in sample:
                raise ConfigError(f"{self.run_dir}: this {self.kind} run needs lung masks: configure a lung model")
            samples.append(sample)
        return samples

    def _probabilities(self, samples: list[dict[str, Any]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(N, C)`` combined probabilities and each learner's ``(N, C)``."""
        if self.ensemble is not None:
            per = self.ensemble.sample_probabilities(samples)
            return self.ensemble.combine(per), {name: per[:, j] for j, name in enumerate(self.members)}
        model = self.members["model"][0]
        decoded = model.predict_samples(samples)
        probs = np.column_stack([np.asarray(decoded[f"prob_{c}"], np.float64) for c in self.classes])
        return probs, {}

    def run(self, cases: list[Any], *, heatmap: bool) -> dict[str, float]:
        timer = Timer()
        with timer("diagnosis"):
            samples = self._samples(cases)
            try:
                probs, per_learner = self._probabilities(samples)
            except InputError as exc:  # e.g. an empty lung mask: no pixel to centre a patch on
                raise InputError("upload", f"{self.role} model cannot read this image: {exc.reason}") from None
        for i, case in enumerate(cases):
            p = {c: float(probs[i, k]) for k, c in enumerate(self.classes)}
            outputs = {f"{name}.prob_{c}": float(v[i, k]) for name, v in per_learner.items()
                       for k, c in enumerate(self.classes)}
            case.report["diagnosis"] = {"probabilities": p, "predicted": max(p, key=p.get), "outputs": outputs}
        if heatmap:
            with timer("heatmap"):
                for case, sample in zip(cases, samples):
                    self._heatmap(case, sample)
        return timer.seconds

    # --- heatmaps --------------------------------------------------------------------------------------------
    def _heatmap(self, case: Any, sample: dict[str, Any]) -> None:
        from cxrlab.explain import heatmap_concordance, lung_fraction

        k = self.classes.index(case.report["diagnosis"]["predicted"])
        maps = [self._member_map(model, sample, k) for models in self.members.values() for model in models]
        frames = [m for m in maps if m is not None and m.shape == case.image.shape]
        case.heatmap = np.mean(frames, axis=0).astype(np.float32) if frames else None
        lungs = case.masks.get(schema.KEY_LUNG_MASK)
        hcs = heatmap_concordance(case.heatmap, lungs) if case.heatmap is not None and lungs is not None \
            and lungs.any() else float("nan")
        case.report["heatmap"] = {
            "method": self.cam_method, "target": case.report["diagnosis"]["predicted"],
            "computed": f"mean of {len(frames)} member maps (Grad-CAM per whole-image model, probabilistic patch "
                        "Grad-CAM per patch model; backward passes, PyTorch fp32)",
            "concordance": float(hcs) if np.isfinite(hcs) else None,
            "chance_level": lung_fraction(lungs) if lungs is not None else None,
            "shown_on_image": case.heatmap is not None,
        }

    def _member_map(self, model: Any, sample: dict[str, Any], k: int) -> np.ndarray | None:
        """One member's [0, 1] map of class ``k`` on the uploaded image's grid."""
        import torch

        from cxrlab.explain import OutputTarget, compute_cam
        from cxrlab.explain.heatmap import rescale

        head = model.model.as_classifier(model.head_names[0]).eval()
        layers = model.cam_target_layers()
        if model.pipeline.patches is not None:
            from cxrlab.patches import probabilistic_patch_cam
            from cxrlab.train.patch_mode import eval_windows

            prepared = torch.from_numpy(np.stack(model.pipeline.prepare(sample)))
            patches, corners = eval_windows(prepared, model.pipeline.patches)
            heat, _ = probabilistic_patch_cam(head, patches, corners, tuple(prepared.shape[-2:]), target_class=k,
                                              target_layers=layers, method=self.cam_method)
            # the canvas is the whole image resized to S x S (cxrlab.patches.extract.masked_canvas)
            h, w = np.asarray(sample[schema.KEY_IMAGE]).shape[-2:]
            heat = rescale(np.asarray(heat, np.float32)[None])[0]
            return cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
        per_input = model.pipeline.prepare_with_lungs(sample)
        x = torch.from_numpy(np.stack([a for a, _, _ in per_input]))
        maps = rescale(compute_cam(head, x, self.cam_method, layers, [OutputTarget(k)] * len(x)))
        frames = [to_image_frame(m, applied) for m, (_, _, applied) in zip(maps, per_input)]
        if any(f is None for f in frames):
            return None
        return np.max(np.stack(frames), axis=0)
