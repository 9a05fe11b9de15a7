"""Explaining a trained run: rebuild its model from the run directory, prepare images exactly as training
did, compute the paper's heatmap per head, HCS against the lung mask carried through the same preprocessing,
and overlay PNGs.

The lung mask follows the image through the run's own input pipeline (intensity steps, ROI scheme, resize and
pad), so heatmap and mask share one frame. Per-side runs (ROI ``lung``/``midline``: one input per lung) give
one heatmap per side; their HCS is the mean of the two sides and their overlay shows both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from cxrlab.data import schema
from cxrlab.errors import ConfigError, InputError
from cxrlab.explain.hcs import (DEFAULT_DEFINITION, DEFAULT_THRESHOLD, HCS_DEFINITIONS, heatmap_concordance,
                                lung_fraction)
from cxrlab.explain.heatmap import probability_weighted_heatmap, rescale
from cxrlab.explain.cams import compute_cam
from cxrlab.explain.overlay import overlay, png_bytes
from cxrlab.machine import restores_torch_threads
from cxrlab.tasks.ordinal import decide
from cxrlab.utils import atomic_write_bytes, atomic_write_json

LUNG_COLUMNS = (schema.MASK_LUNGS, schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG)


@dataclass
class ExplainModel:
    """A run's network in eval mode with what is needed to feed it and to name its outputs."""

    model: nn.Module
    pipeline: Any  # cxrlab.train.inputs.InputPipeline
    tasks: Any  # cxrlab.tasks.TaskSet
    target_layers: list[nn.Module]
    run_dir: Path
    segmenter: Any = None  # cxrlab.anatomy LungSegmenter for images without mask files
    threads: int = 0  # the run's training thread count (the explain command runs on it; 0: unset)

    def heads(self) -> dict[str, dict]:
        """Head name -> {"task", "classes", "ordinal_scale"} for the classification/ordinal heads."""
        out = {}
        for task in self.tasks.tasks:
            if task.kind == "diagnosis":
                out[task.name] = {"task": task.name, "classes": list(task.classes), "column": task.column}
            elif task.kind == "binary":
                out[task.name] = {"task": task.name, "classes": ["0", "1"], "column": task.column}
            elif hasattr(task, "outputs") and hasattr(task, "head_name"):  # ordinal: one head per column
                for column in task.outputs:
                    out[task.head_name(column)] = {"task": task.name, "column": column,
                                                   "classes": [str(g) for g in range(task.n_grades)],
                                                   "ce": getattr(task, "loss_name", "ce") == "ce",
                                                   "decision": getattr(task, "decision", "mode")}
        return out


def load_explain_model(run_dir: str | os.PathLike, checkpoint: str = "best",
                       lung_model: str | os.PathLike | None = None) -> ExplainModel:
    """The run's trained model (``cxrlab.train.load_run``) in eval mode, with its CAM layer from the backbone
    registry entry; ``lung_model`` (a segmentation run) supplies lung masks for images that have none."""
    from cxrlab.train import load_run

    run = load_run(run_dir, checkpoint)
    run.model.eval()  # torch's thread count stays the caller's: loading a model is no place to change it
    segmenter = None
    if lung_model is not None:
        from cxrlab.anatomy.predict import LungSegmenter

        segmenter = LungSegmenter.from_run(lung_model)
    return ExplainModel(run.model, run.pipeline, run.tasks, run.cam_target_layers(), Path(run_dir), segmenter,
                        threads=int(run.recipe.train.threads or 0))


def _row_sample(em: ExplainModel, row: pd.Series | dict) -> dict:
    from cxrlab.data.dataset import load_sample

    row = dict(row)
    cols = [c for c in LUNG_COLUMNS if isinstance(row.get(c), str) and row.get(c)]
    sample = load_sample(row, cols, label_columns=[])
    if not cols and em.segmenter is not None:
        sample.update(em.segmenter.predict(sample[schema.KEY_IMAGE]))
    return sample


def prepare_with_mask(em: ExplainModel, row: pd.Series | dict) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """``[(C×H×W input, H×W lung mask or None)]`` per model input of the image (two for per-side runs)."""
    return [(image, lungs) for image, lungs, _ in em.pipeline.prepare_with_lungs(_row_sample(em, row))]


def prepare_patches(em: ExplainModel, row: pd.Series | dict) -> tuple[torch.Tensor, np.ndarray, np.ndarray,
                                                                      np.ndarray]:
    """Patch runs: the image's K inference patches ``(K, C, P, P)`` (the ones ``predict`` uses), their corners
    ``(K, 2)``, the lung-masked canvas ``C×S×S`` and its lung mask ``S×S`` (uint8)."""
    from cxrlab.train.patch_mode import eval_windows

    prepared = torch.from_numpy(np.stack(em.pipeline.prepare(_row_sample(em, row))))
    patches, corners = eval_windows(prepared, em.pipeline.patches)
    return patches, corners, prepared[0, :-1].numpy(), (prepared[0, -1].numpy() > 0.5).astype(np.uint8)


def explain_patch_rows(em: ExplainModel, rows: Iterable[pd.Series | dict], head: str, method: str = "gradcam",
                       threshold: float = DEFAULT_THRESHOLD, with_overlay: bool = True,
                       hcs_definition: str = DEFAULT_DEFINITION) -> list[dict]:
    """Patch runs (``input.patches``): :func:`explain_rows`' entries from the probabilistic patch Grad-CAM.

    Per image, its K inference patches are classified in one pass and aggregated (vote or mean, as in
    ``predict``); the predicted class is the argmax of the aggregated probabilities (as ``predict``'s
    ``pred_`` column). Each patch's CAM of that class, weighted by the patch's probability of it, is put back
    on the lung-masked canvas and count-normalised (:func:`cxrlab.patches.probabilistic_patch_cam`); HCS is
    computed against the canvas lung mask, and the overlay is drawn on the canvas."""
    from cxrlab.patches import probabilistic_patch_cam
    from cxrlab.train.patch_mode import image_probabilities

    spec = em.pipeline.patches
    module = em.model.as_classifier(head).eval()
    results = []
    for row in rows:
        patches, corners, canvas, mask = prepare_patches(em, row)
        with torch.no_grad():
            probs = image_probabilities(module(patches).float().numpy(), spec)[0]
        pred = int(probs.argmax())
        heat, _ = probabilistic_patch_cam(module, patches, corners, mask.shape, target_class=pred,
                                          target_layers=em.target_layers, method=method)
        hcs = heatmap_concordance(heat, mask, threshold, hcs_definition) if mask.any() else float("nan")
        entry = {"image": str(dict(row)[schema.IMAGE]), "probs": probs.tolist(), "probs_per_input": [probs.tolist()],
                 "pred": pred, "hcs": float(hcs), "hcs_per_input": [float(hcs)], "lung_fraction": lung_fraction(mask),
                 "patches": int(len(patches)), "aggregate": spec.aggregate}
        if with_overlay:
            entry["overlay"] = overlay(canvas, heat, mask)
        results.append(entry)
    return results


def head_heatmap(em: ExplainModel, x: torch.Tensor, head: str, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(N×H×W heatmap, N×K class probabilities) of one head.

    Softmax heads: the probability-weighted class average. Cumulative ordinal heads (CORN/CORAL, K-1 logits
    of P(grade > k)) have no per-class logit: their map is that of the summed logits (the severity direction),
    and the probabilities come from the task's decoding.
    """
    info = em.heads()[head]
    module = em.model.as_classifier(head).eval()
    if info.get("ce", True):
        return probability_weighted_heatmap(module, x, method, em.target_layers)
    with torch.no_grad():
        logits = module(x).numpy()
    task = next(t for t in em.tasks.tasks if t.name == info["task"])
    maps = compute_cam(module, x, method, em.target_layers, [_SumTarget()] * len(x))
    return rescale(maps), task.grade_probs(logits)


def heads_heatmap(em: ExplainModel, x: torch.Tensor, heads: Sequence[str], method: str
                  ) -> tuple[np.ndarray, np.ndarray]:
    """One head's heatmap, or for several heads (a two-headed per-lung model: patient-right and patient-left
    opacity) the paper's average of their heatmaps; probabilities ``N×K`` (one head) or ``N×heads×K``."""
    if len(heads) == 1:
        return head_heatmap(em, x, heads[0], method)
    heats, probs = zip(*(head_heatmap(em, x, h, method) for h in heads))
    return rescale(np.mean(np.stack(heats), axis=0)), np.stack(probs, axis=1)


class _SumTarget:
    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output.sum()


def explain_rows(em: ExplainModel, rows: Iterable[pd.Series | dict], head: str | Sequence[str],
                 method: str = "gradcam", threshold: float = DEFAULT_THRESHOLD, with_overlay: bool = True,
                 batch_size: int = 16, hcs_definition: str = DEFAULT_DEFINITION) -> list[dict]:
    """Per image: probabilities, predicted class, HCS (NaN without a mask), lung fraction and overlay PNG.

    ``hcs_definition``: ``nonzero`` (the paper's share of non-zero heatmap pixels) or ``mass`` (share of the
    mass at or above ``threshold``); see :mod:`cxrlab.explain.hcs`.

    ``head``: one head, or several whose heatmaps are averaged (per-lung heads of one model); then ``probs``
    is per head and ``pred`` the highest predicted class over the heads. An ordinal head's class is read by its
    task's decision rule (mode or median), as ``predict`` reads it.
    """
    heads = [head] if isinstance(head, str) else list(head)
    if em.pipeline.patches is not None:
        if len(heads) != 1:
            raise ConfigError(f"patch-mode runs explain one head at a time, got {heads}")
        return explain_patch_rows(em, rows, heads[0], method, threshold, with_overlay, hcs_definition)
    rows = list(rows)
    results = []
    decision = em.heads()[heads[0]].get("decision", "mode")  # the grade rule of the run's predictions
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        inputs = [prepare_with_mask(em, row) for row in chunk]  # per image: one input, or one per side
        flat = [item for per_image in inputs for item in per_image]
        heat, probs = heads_heatmap(em, torch.from_numpy(np.stack([a for a, _ in flat])), heads, method)
        i = 0
        for row, per_image in zip(chunk, inputs):
            k = len(per_image)
            h, p = heat[i:i + k], probs[i:i + k]
            i += k
            hcs = [heatmap_concordance(hm, m, threshold, hcs_definition) if m is not None and m.any()
                   else float("nan")
                   for hm, (_, m) in zip(h, per_image)]
            fractions = [lung_fraction(m) if m is not None else float("nan") for _, m in per_image]
            mean_p = p.mean(axis=0)  # over the inputs of the image (sides of a per-side run)
            entry = {"image": str(dict(row)[schema.IMAGE]), "probs": mean_p.tolist(), "probs_per_input": p.tolist(),
                     "pred": int(decide(np.atleast_2d(mean_p), decision).max()), "hcs": _nanmean(hcs),
                     "hcs_per_input": hcs,
                     "lung_fraction": _nanmean(fractions)}
            if with_overlay:
                entry["overlay"] = np.hstack([overlay(a, hm, m) for hm, (a, m) in zip(h, per_image)])
            results.append(entry)
    return results


def _nanmean(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=float)
    return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else float("nan")


@restores_torch_threads
def explain_images(run_dir: str | os.PathLike, images: Sequence[str | os.PathLike], out: str | os.PathLike,
                   method: str = "gradcam", head: str | None = None, threshold: float = DEFAULT_THRESHOLD,
                   data: str | os.PathLike | None = None, lung_model: str | os.PathLike | None = None,
                   progress: Any = None, hcs_definition: str = DEFAULT_DEFINITION) -> Path:
    """Write ``<stem>_<head>_<method>.png`` overlays and ``explain.json`` (probabilities, HCS) to ``out``.

    Lung masks for the contour and HCS come from ``data`` (a manifest listing the images) when given, else
    from ``lung_model`` (a lung segmentation run).
    """
    HCS_DEFINITIONS.get(hcs_definition)  # an unknown name fails before the model loads
    em = load_explain_model(run_dir, lung_model=lung_model)
    if em.threads:
        torch.set_num_threads(em.threads)  # as training does: extra threads stall on a shared CPU
    heads = em.heads()
    if head is None:
        head = next(iter(heads), None)
    if head not in heads:
        raise ConfigError(f"run {run_dir} has no explainable head {head!r}; heads: {', '.join(heads) or 'none'}")
    rows = _rows_for(images, data)
    out = Path(out)
    summary = []
    task = progress.add_task("explaining", total=len(rows), status="") if progress else None
    for row in rows:
        res = explain_rows(em, [row], head, method, threshold, hcs_definition=hcs_definition)[0]
        name = f"{Path(res['image']).stem}_{head.replace(':', '_').replace('.', '_')}_{method}.png"
        atomic_write_bytes(out / name, png_bytes(res.pop("overlay")))
        res.update(overlay=name, classes=heads[head]["classes"])
        res["pred_class"] = res["classes"][res["pred"]] if res["pred"] < len(res["classes"]) else str(res["pred"])
        summary.append(res)
        if progress:
            progress.advance(task)
    atomic_write_json(out / "explain.json", {"run": str(run_dir), "method": method, "head": head,
                                             "hcs_definition": hcs_definition, "hcs_threshold": threshold,
                                             "images": summary})
    return out


def _rows_for(images: Sequence[str | os.PathLike], data: str | os.PathLike | None) -> list[dict]:
    paths = [str(Path(p).resolve()) for p in images]
    for p in paths:
        if not Path(p).is_file():
            raise InputError(p, "image file does not exist")
    if data is None:
        return [{schema.IMAGE: p} for p in paths]
    from cxrlab.data.manifest import load_manifest

    df = load_manifest(data).df
    by_path = {str(Path(p).resolve()): r for p, r in zip(df[schema.IMAGE], df.to_dict("records"))}
    return [by_path.get(p, {schema.IMAGE: p}) for p in paths]
