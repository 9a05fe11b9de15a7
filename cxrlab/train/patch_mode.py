"""Patch input mode (``input.patches``): the learning engine's side of :mod:`cxrlab.patches` (issue #18).

What is prepared (and cached, like every run's inputs) per image is the **lung-masked canvas** with its lung
mask as one extra channel, ``(C + 1, S, S)``: the image after the recipe's intensity steps (CLAHE, sharpening)
resized to S×S, pixels outside the lungs zeroed, and the canvas mask (0/1, exact in half precision). Patches
are cut from it later:

- training: ``train_patches`` draws ``train_count`` fresh patches per image at every step, centres drawn from
  lung pixels jointly (:func:`cxrlab.patches.sample_lung_centres`), from a generator seeded by (recipe seed,
  stage, epoch, batch), so a resumed run draws the same patches;
- validation and prediction: ``eval_patches`` cuts ``count`` patches per image from a generator seeded by
  ``input.patches.seed`` and the image's canvas lung mask, so an image gets the same patches in training's
  final predictions, in ``cxrlab predict`` and in two calls of ``RunModel.predict``, whatever batch it is in;
  ``image_probabilities`` aggregates the K patch predictions per image (vote or mean) and ``as_logits`` turns
  them into log-probabilities that the tasks decode into ordinary per-image ``prob_<class>`` columns.

Only tasks with one softmax head per image (``diagnosis``) can be aggregated; others are refused up front.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch

from cxrlab.data import schema
from cxrlab.errors import ConfigError, InputError
from cxrlab.patches import aggregate_patches, clamp_windows, extract_patches_batch, masked_canvas
from cxrlab.patches.sampling import sample_lung_centres
from cxrlab.recipes.schema import PatchSpec

# tasks whose per-image output is one softmax over classes: patch probabilities can be voted on or averaged
AGGREGATABLE_TASKS = ("diagnosis",)


def check_tasks(tasks: Any) -> None:
    """Refuse tasks whose patch outputs cannot be aggregated into one image prediction."""
    bad = [t.name for t in tasks.tasks if type(t).__name__ != "DiagnosisTask"]
    if bad:
        raise ConfigError(f"input.patches: task(s) {', '.join(bad)} cannot be aggregated over patches; patch mode "
                          f"supports {', '.join(AGGREGATABLE_TASKS)} tasks only")


def lung_union(sample: dict) -> np.ndarray | None:
    masks = [np.asarray(sample[k]) for k in (schema.KEY_LUNG_MASK, schema.KEY_RIGHT_MASK, schema.KEY_LEFT_MASK)
             if sample.get(k) is not None]
    return (np.maximum.reduce(masks) > 0).astype(np.uint8) if masks else None


def canvas_input(sample: dict, spec: PatchSpec) -> np.ndarray:
    """``(C + 1, S, S)`` float32: the lung-masked canvas and, as the last channel, its lung mask."""
    source = sample.get(schema.KEY_META, {}).get("image", "<sample>")
    lungs = lung_union(sample)
    if lungs is None:
        raise InputError(source, "input.patches needs lung masks: give mask columns in the manifest or "
                         "--lung-model RUN")
    canvas, mask = masked_canvas(sample[schema.KEY_IMAGE], lungs, spec.canvas, source)
    if not mask.any():
        raise InputError(source, f"lung mask is empty on the {spec.canvas}-px canvas: no pixel to centre a patch on")
    return np.concatenate([canvas, mask[None].astype(np.float32)])


def split_canvas(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, C + 1, S, S)`` → canvases ``(B, C, S, S)`` float32 and lung masks ``(B, S, S)`` bool."""
    return x[:, :-1].float(), x[:, -1] > 0.5


def _windows(canvases: torch.Tensor, masks: torch.Tensor, spec: PatchSpec, count: int,
             rngs: list[np.random.Generator]) -> tuple[torch.Tensor, np.ndarray]:
    """``(B, K, C, P, P)`` patches and their ``(B, K, 2)`` top-left corners on the canvas."""
    shape = tuple(masks.shape[1:])
    corners = []
    for mask, rng in zip(masks.numpy(), rngs):
        centres = sample_lung_centres(mask, count, rng)  # looked up on this module: tests spy on it
        corners.append(clamp_windows(centres, spec.size, shape))
    corners = np.stack(corners)
    return extract_patches_batch(canvases, torch.from_numpy(corners), spec.size), corners


def _patches(canvases: torch.Tensor, masks: torch.Tensor, spec: PatchSpec, count: int,
             rngs: list[np.random.Generator]) -> torch.Tensor:
    out, _ = _windows(canvases, masks, spec, count, rngs)
    return out.reshape(-1, *out.shape[2:]).contiguous()


def train_patches(x: torch.Tensor, spec: PatchSpec, seed: int) -> torch.Tensor:
    """``(B·train_count, C, P, P)`` fresh random patches (image b's are rows b·T … b·T + T − 1)."""
    canvases, masks = split_canvas(x)
    rng = np.random.default_rng(seed)
    return _patches(canvases, masks, spec, spec.train_count, [rng] * len(canvases))


def image_seed(mask: np.ndarray, spec: PatchSpec) -> list[int]:
    """Seed of an image's inference patches: the recipe's patch seed and a checksum of its canvas lung mask."""
    return [int(spec.seed), zlib.crc32(np.packbits(np.asarray(mask, dtype=bool)).tobytes())]


def eval_patches(x: torch.Tensor, spec: PatchSpec) -> torch.Tensor:
    """``(B·count, C, P, P)``: each image's ``count`` inference patches, seeded per image (see module doc)."""
    canvases, masks = split_canvas(x)
    rngs = [np.random.default_rng(image_seed(m, spec)) for m in masks.numpy()]
    return _patches(canvases, masks, spec, spec.count, rngs)


def eval_windows(x: torch.Tensor, spec: PatchSpec) -> tuple[torch.Tensor, np.ndarray]:
    """One prepared image ``(1, C + 1, S, S)``: its inference patches ``(K, C, P, P)`` (the same as
    :func:`eval_patches`) and their top-left corners ``(K, 2)``, for mapping patch heatmaps back."""
    canvases, masks = split_canvas(x[:1])
    rng = np.random.default_rng(image_seed(masks[0].numpy(), spec))
    patches, corners = _windows(canvases, masks, spec, spec.count, [rng])
    return patches[0].contiguous(), corners[0]


def image_probabilities(patch_logits: np.ndarray, spec: PatchSpec) -> np.ndarray:
    """``(B·K, n)`` patch logits of one softmax head → ``(B, n)`` aggregated image probabilities."""
    z = np.asarray(patch_logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    probs = (z / z.sum(axis=1, keepdims=True)).reshape(-1, spec.count, z.shape[1])
    return aggregate_patches(probs, spec.aggregate).probs


def as_logits(patch_outputs: dict[str, np.ndarray], spec: PatchSpec) -> dict[str, np.ndarray]:
    """Per-head patch logits → per-image log-probabilities (float64), whose softmax is the aggregated
    probability itself: a class no patch voted for has logit −inf and probability exactly 0."""
    with np.errstate(divide="ignore"):
        return {k: np.log(image_probabilities(v, spec)) for k, v in patch_outputs.items()}
