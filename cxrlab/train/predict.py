"""``load_run(run_dir)``: a trained run as a predictor for new images (CLI ``predict``, evaluation, service).

>>> run = load_run("runs/demo")
>>> run.predict(["a.png", "b.dcm"])              # DataFrame: image, prob_<class>, pred_*...
>>> run.predict_sample({"image": img, "patient_right_mask": r, "patient_left_mask": l})
>>> run.inputs_for(sample)                       # (per_image, C, H, W) float32 tensor: what the model sees
>>> run.patches_for(sample)                      # patch-mode runs (input.patches): the (K, C, P, P) patches
>>> run.cam_target_layers()                      # for pytorch-grad-cam, with run.model.as_classifier(head)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from cxrlab.data import schema
from cxrlab.data.dataset import load_sample
from cxrlab.data.manifest import Manifest
from cxrlab.config import read_yaml_mapping
from cxrlab.errors import ConfigError, InputError
from cxrlab.models import BackboneEntry, CxrNet, get_backbone_entry
from cxrlab.recipes import Recipe
from cxrlab.recipes.loader import validate_recipe
from cxrlab.tasks import TaskSet
from cxrlab.train.inputs import InputPipeline
from cxrlab.train.speed import autocast, resolve_precision
from cxrlab.train.trainer import build_model, build_tasks

class RunModel:
    """A run directory's best model with its input pipeline and tasks."""

    def __init__(self, run_dir: Path, recipe: Recipe, model: CxrNet, tasks: TaskSet, pipeline: InputPipeline):
        self.run_dir, self.recipe, self.model, self.tasks, self.pipeline = run_dir, recipe, model, tasks, pipeline
        self.precision = resolve_precision(recipe.train.precision)
        self._segmenter: Any = None
        self.lung_masks_report: dict[str, Any] | None = None

    @classmethod
    def load(cls, run_dir: str | os.PathLike, checkpoint: str = "best") -> "RunModel":
        from cxrlab.models.weights import load_checkpoint, load_state

        run_dir = Path(run_dir)
        path = run_dir / "checkpoints" / f"{checkpoint}.pt"
        if not run_dir.is_dir():
            raise InputError(run_dir, "run directory does not exist" if not run_dir.exists()
                             else "not a directory (a training run directory is expected)")
        recipe_file = run_dir / "recipe.yaml"
        if not recipe_file.is_file():
            raise InputError(run_dir, "not a training run directory (no recipe.yaml)")
        raw = read_yaml_mapping(recipe_file, "run recipe")
        if raw.get("kind") == "ensemble":  # cxrlab.train.ensemble.load_ensemble: several models and a combiner
            raise InputError(run_dir, "is an ensemble run: `cxrlab predict`, `evaluate`, `serve` and `export` "
                             "take it (cxrlab.train.load_ensemble); single-model tools such as `explain` take one "
                             "of its members (learners/<name>/fold<k>)")
        if "tasks" not in raw and "arch" in raw:
            raise InputError(run_dir, "is a lung segmentation run (use it as --lung-model), not a training run")
        if "tasks" not in raw and ("lung_run" in raw or raw.get("kind") == "severity"):
            raise InputError(run_dir, "is a severity run (use `cxrlab severity score`), not a training run")
        if not path.is_file():
            raise InputError(run_dir, f"not a finished training run (no checkpoints/{checkpoint}.pt)")
        try:
            recipe = validate_recipe(raw, recipe_file)
        except ConfigError as exc:
            reason = str(exc).removeprefix(f"recipe {recipe_file}: ")
            raise InputError(recipe_file, f"not a valid recipe for this cxrlab version ({reason}); was the run "
                                          "written by another version?") from None
        pipeline = InputPipeline(recipe.input)
        tasks = build_tasks(recipe, pipeline)
        # the structure only: the trained weights (and the normalisation buffers) come from the checkpoint
        model, _ = build_model(recipe, tasks, pipeline, weights="none")
        load_state(model, load_checkpoint(path)["model"], path, "model")
        model.eval()
        return cls(run_dir, recipe, model, tasks, pipeline)

    @property
    def entry(self) -> BackboneEntry:
        return get_backbone_entry(self.recipe.model.backbone)

    def cam_target_layers(self) -> list[torch.nn.Module]:
        return self.entry.cam_target_layers(self.model)

    @property
    def head_names(self) -> list[str]:
        return list(self.model.heads.keys())

    # --- inputs ---------------------------------------------------------------------------------------
    def _with_masks(self, sample: dict, lung_model: str | os.PathLike | None) -> dict:
        if not self.pipeline.needs_masks or any(sample.get(k) is not None for k in
                                                (schema.KEY_RIGHT_MASK, schema.KEY_LUNG_MASK)):
            return sample
        if lung_model is None:
            return sample  # the ROI scheme raises a clear error naming the image
        if self._segmenter is None:
            from cxrlab.anatomy.predict import LungSegmenter

            from cxrlab.train.masks import trained_lung_output

            self._segmenter = LungSegmenter.from_run(lung_model,
                                                     convention=trained_lung_output(self.run_dir, lung_model))
        return {**sample, **self._segmenter.predict(sample[schema.KEY_IMAGE])}

    def _prepared(self, sample: dict, lung_model: str | os.PathLike | None) -> torch.Tensor:
        """``(per_image, C, H, W)``: the pipeline's output (patch mode: ``(1, C + 1, S, S)`` masked canvas + mask)."""
        sample = self._with_masks(sample, lung_model)
        return torch.from_numpy(np.stack(self.pipeline.prepare(sample)))

    def inputs_for(self, sample: dict, lung_model: str | os.PathLike | None = None) -> torch.Tensor:
        """``(per_image, C, H, W)`` float32 model input for one sample dict (image float32 [0, 1] + masks).

        A patch-mode run has K inputs per image, not one: use :meth:`patches_for` (this refuses, so that code
        written for one input per image fails clearly instead of feeding the model a canvas)."""
        if self.pipeline.patches is not None:
            raise ConfigError(f"{self.run_dir} is a patch-mode run (input.patches): it has no single input per "
                              "image; use RunModel.patches_for or RunModel.predict")
        return self._prepared(sample, lung_model)

    def patches_for(self, sample: dict, lung_model: str | os.PathLike | None = None) -> torch.Tensor:
        """Patch mode: ``(K, C, P, P)`` float32, the image's K seeded inference patches (what the model sees)."""
        from cxrlab.train.patch_mode import eval_patches

        if self.pipeline.patches is None:
            raise ConfigError(f"{self.run_dir} is not a patch-mode run (no input.patches); use inputs_for")
        return eval_patches(self._prepared(sample, lung_model), self.pipeline.patches)

    # --- prediction -----------------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        self.model.eval()
        with autocast(self.precision):
            out = self.model(x)
        return {k: v.float().numpy() for k, v in out.items()}

    def image_logits(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """Per-image logits for prepared inputs ``(images·per_image, C, H, W)``. Patch mode: ``x`` holds masked
        canvases; each image's K seeded patches go through the model in one forward pass and are aggregated
        (``input.patches.aggregate``: vote or mean) into log-probabilities, decoded like any logits."""
        spec = self.pipeline.patches
        if spec is None:
            return self.logits(x)
        from cxrlab.train.patch_mode import as_logits, eval_patches

        parts = [as_logits(self.logits(eval_patches(x[i:i + 1], spec)), spec) for i in range(len(x))]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}

    def _decode(self, logits: dict[str, np.ndarray], n_rows: int) -> dict[str, np.ndarray]:
        per = self.pipeline.per_image
        item_row = np.repeat(np.arange(n_rows), per)
        item_side = np.tile(np.arange(per), n_rows)
        return self.tasks.decode(logits, item_row, item_side, n_rows) if self.tasks.per_side \
            else self.tasks.decode(logits)

    def predict_sample(self, sample: dict, lung_model: str | os.PathLike | None = None) -> dict[str, Any]:
        """Prediction columns for one in-memory sample."""
        decoded = self.predict_samples([sample], lung_model)
        return {k: (v[0].item() if hasattr(v[0], "item") else v[0]) for k, v in decoded.items()}

    def predict_samples(self, samples: Sequence[dict], lung_model: str | os.PathLike | None = None
                        ) -> dict[str, np.ndarray]:
        """Prediction columns (one row per sample) for in-memory samples, in one forward pass."""
        if not samples:
            return {}
        x = torch.cat([self._prepared(s, lung_model) for s in samples])
        return self._decode(self.image_logits(x), len(samples))

    def predict(self, data: pd.DataFrame | Manifest | str | os.PathLike | Sequence[str | os.PathLike],
                lung_model: str | os.PathLike | None = None, batch_size: int = 32,
                quality: Any | None = None, keep_failing: bool = False,
                mask_cache: str | os.PathLike | None = None) -> pd.DataFrame:
        """One row per image: ``image`` (+ ``patient_id``/targets when given a manifest) and prediction columns.

        ``quality`` (a :class:`cxrlab.quality.QualityGate` or its run directory) adds the ``quality_*`` columns;
        images it refuses (lateral, not a chest film, unreadable) get no prediction unless ``keep_failing``,
        and images it finds inverted are corrected before prediction.

        ``lung_model``: lung masks of images without them are predicted once and cached by image content and
        lung run (:func:`cxrlab.train.masks.fill_lung_masks`, the same cache training uses) in ``mask_cache``
        (default ``$CXRLAB_HOME/lung_masks``); ``self.lung_masks_report`` says how many were predicted.
        """
        df = _as_frame(data).reset_index(drop=True)
        self.lung_masks_report = None
        if lung_model is not None and self.pipeline.needs_masks:
            from cxrlab.train.masks import fill_lung_masks
            from cxrlab.utils import cxrlab_home

            from cxrlab.train.masks import trained_lung_output

            df, self.lung_masks_report = fill_lung_masks(
                df, lung_model, Path(mask_cache) if mask_cache is not None else cxrlab_home() / "lung_masks",
                output=trained_lung_output(self.run_dir, lung_model))
        checks = None
        if quality is not None:
            from cxrlab.quality.batch import as_gate, check_frame, inverted_rows

            checks = check_frame(as_gate(quality), df, batch_size)
        run_rows = np.flatnonzero((checks["quality_verdict"] != "refuse").to_numpy()) \
            if checks is not None and not keep_failing else np.arange(len(df))
        inverted = inverted_rows(checks).to_numpy() if checks is not None else np.zeros(len(df), bool)
        mask_cols = [c for c in df.columns if c.startswith("mask_") and df[c].notna().all()]
        decoded_parts = []
        for start in range(0, len(run_rows), batch_size):
            chunk = run_rows[start:start + batch_size]
            samples = []
            for i in chunk:
                sample = load_sample(df.iloc[i], mask_cols, label_columns=[])
                if inverted[i]:
                    sample[schema.KEY_IMAGE] = 1.0 - sample[schema.KEY_IMAGE]
                samples.append(self._prepared(sample, lung_model))
            decoded_parts.append(self._decode(self.image_logits(torch.cat(samples)), len(chunk)))
        keep = [c for c in [schema.IMAGE, schema.PATIENT_ID, *self.tasks.columns] if c in df.columns]
        out = df[keep].copy()
        for key in decoded_parts[0] if decoded_parts else []:
            values = np.concatenate([np.asarray(p[key]) for p in decoded_parts])
            if len(run_rows) == len(df):
                out[key] = values
                continue
            column = pd.Series([None] * len(df), dtype=object if values.dtype.kind in "OUSb" else float)
            column.iloc[run_rows] = values  # skipped images: no prediction (NaN / None)
            out[key] = column
        if checks is not None:
            out = pd.concat([out, checks], axis=1)
        return out


def _as_frame(data: Any) -> pd.DataFrame:
    """A manifest/DataFrame as is; paths (image files, folders of images, manifests) via ``resolve_inputs``."""
    if isinstance(data, Manifest):
        return data.df
    if isinstance(data, pd.DataFrame):
        return data
    from cxrlab.data.inputs import resolve_inputs

    return resolve_inputs(data).df


def load_run(run_dir: str | os.PathLike, checkpoint: str = "best") -> RunModel:
    """The trained model of a run directory, ready to predict (see ``RunModel``)."""
    return RunModel.load(run_dir, checkpoint)
