"""``LungSegmenter``: a trained segmentation run directory as an inferer (the thing ``--lung-model RUN`` names).

>>> seg = LungSegmenter.from_run("runs/lung_bench")
>>> masks = seg.predict(image)          # image: float32 H×W in [0, 1]
>>> masks["patient_right_mask"].shape == image.shape
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cxrlab.anatomy.architectures import SegmentationNet, create_segmentation_model
from cxrlab.anatomy.config import SegmentationConfig, load_config
from cxrlab.anatomy.postprocess import assign_lungs, clean
from cxrlab.data import schema
from cxrlab.data.dataset import mask_key
from cxrlab.errors import InputError
from cxrlab.transforms import ResizePadd, undo_resize_pad


def bf16_supported() -> bool:
    """bf16 autocast pays off on CPUs with native bf16 dot products (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16" if bf16_supported() else "fp32"
    return precision


def autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise InputError(path, "checkpoint does not exist (is this a finished segmentation run?)")
    return torch.load(path, map_location="cpu", weights_only=False)


class LungSegmenter:
    """Inference with a trained model: letterbox → network → probabilities back at the input size →
    post-processing (largest component per lung, holes filled, sides decided anatomically)."""

    def __init__(self, model: SegmentationNet, config: SegmentationConfig, precision: str = "auto",
                 run_dir: Path | None = None, supervised_targets: Sequence[str] | None = None):
        self.model = model.eval()
        self.config = config
        # Targets the training data had; an unsupervised channel's output is noise and is never returned.
        self.supervised_targets = list(config.targets if supervised_targets is None else supervised_targets)
        unknown = set(self.supervised_targets) - set(config.targets)
        if unknown:
            raise InputError(run_dir or "segmenter", f"supervised targets {sorted(unknown)} are not model targets "
                             f"{config.targets}", field="supervised_targets")
        self.precision = resolve_precision(precision)
        self.run_dir = run_dir
        self._resize = ResizePadd(config.size)

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "best", precision: str = "auto") -> "LungSegmenter":
        run_dir = Path(run_dir)
        recipe = run_dir / "recipe.yaml"
        if not recipe.exists():
            raise InputError(run_dir, "not a segmentation run directory (no recipe.yaml)")
        cfg = load_config(recipe)
        state = load_checkpoint(run_dir / "checkpoints" / f"{checkpoint}.pt")
        model = create_segmentation_model(cfg.arch, cfg.encoder, "none", cfg.in_channels, len(cfg.targets),
                                          **cfg.arch_kwargs)
        model.load_state_dict(state["model"])
        # Runs written before targets were recorded supervised every target they name.
        return cls(model, cfg, precision, run_dir, state.get("supervised_targets"))

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    def output_keys(self) -> list[str]:
        keys = [mask_key(c) for c in self.config.targets if c in self.supervised_targets]
        return keys + ([schema.KEY_LUNG_MASK] if self.config.is_lung_model else [])

    def _prepare(self, image: np.ndarray, lung_mask: np.ndarray | None, index: int) -> tuple[np.ndarray, dict]:
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 2:
            raise InputError(f"image {index}", f"expected a grey H×W image, got shape {image.shape}; the model "
                             f"takes {self.in_channels} channel(s): "
                             + ("the image (give a lung mask separately)" if self.in_channels == 2 else "the image"))
        if self.in_channels == 2 and lung_mask is None:
            raise InputError(f"image {index}", "this model's input is image+lung (2 channels): pass lung_mask")
        if self.in_channels == 1 and lung_mask is not None:
            raise InputError(f"image {index}", "this model takes the image only (1 channel); lung_mask given")
        sample: dict[str, Any] = {schema.KEY_IMAGE: image.astype(np.float32)}
        if lung_mask is not None:
            if lung_mask.shape != image.shape:
                raise InputError(f"image {index}", f"lung mask {lung_mask.shape} differs from image {image.shape}",
                                 field=schema.KEY_LUNG_MASK)
            sample["input_lung_mask"] = np.asarray(lung_mask, dtype=np.uint8)
        out = self._resize(sample)
        x = out[schema.KEY_IMAGE][None]
        if lung_mask is not None:
            x = np.concatenate([x, out["input_lung_mask"][None].astype(np.float32)])
        return x, out[schema.KEY_META]["applied"][-1]

    @torch.no_grad()
    def probabilities(self, images: Sequence[np.ndarray], lung_masks: Sequence[np.ndarray] | None = None
                      ) -> list[np.ndarray]:
        """Per image a K×H×W float32 probability map at the image's own size."""
        lung_masks = list(lung_masks) if lung_masks is not None else [None] * len(images)
        if len(lung_masks) != len(images):
            raise InputError("predict_batch", f"{len(images)} images but {len(lung_masks)} lung masks")
        prepared = [self._prepare(im, lm, i) for i, (im, lm) in enumerate(zip(images, lung_masks))]
        if not prepared:
            return []
        x = torch.from_numpy(np.stack([p[0] for p in prepared]))
        with autocast(self.precision):
            probs = torch.sigmoid(self.model(x)).float().numpy()
        return [undo_resize_pad(p, params, is_mask=False) for p, (_, params) in zip(probs, prepared)]

    def postprocess(self, probs: np.ndarray) -> dict[str, np.ndarray]:
        t = self.config.threshold
        out: dict[str, np.ndarray] = {}
        targets = self.config.targets
        for k, col in enumerate(targets):
            if col not in (schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG) and col in self.supervised_targets:
                m = (probs[k] >= t).astype(np.uint8)
                out[mask_key(col)] = clean(m) if col == schema.MASK_HEART else m
        if self.config.is_lung_model:
            r, l = assign_lungs(probs[targets.index(schema.MASK_RIGHT_LUNG)],
                                probs[targets.index(schema.MASK_LEFT_LUNG)], t)
            out[schema.KEY_RIGHT_MASK], out[schema.KEY_LEFT_MASK] = r, l
            out[schema.KEY_LUNG_MASK] = (r | l).astype(np.uint8)
        return out

    def predict_batch(self, images: Sequence[np.ndarray], lung_masks: Sequence[np.ndarray] | None = None,
                      batch_size: int = 32) -> list[dict[str, np.ndarray]]:
        """Masks (uint8 {0,1}, each at its image's size) for a list of images of any sizes."""
        out: list[dict[str, np.ndarray]] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            masks = None if lung_masks is None else lung_masks[start:start + batch_size]
            out.extend(self.postprocess(p) for p in self.probabilities(chunk, masks))
        return out

    def predict(self, image: np.ndarray, lung_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``{"patient_right_mask", "patient_left_mask", "lung_mask", ("heart_mask")}`` at the image's size."""
        return self.predict_batch([image], None if lung_mask is None else [lung_mask])[0]

    def __repr__(self) -> str:
        c = self.config
        return f"LungSegmenter({c.arch}/{c.encoder}, size={c.size}, targets={c.targets}, run={self.run_dir})"


