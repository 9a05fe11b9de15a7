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
from cxrlab.anatomy.config import SegmentationConfig, convention_channel, load_config
from cxrlab.anatomy.default_output import RUN_DEFAULT, SHARED, run_default_convention
from cxrlab.anatomy.threshold import run_threshold
from cxrlab.anatomy.postprocess import assign_lungs, clean
from cxrlab.data import schema
from cxrlab.data.dataset import mask_key
from cxrlab.config import read_yaml_mapping
from cxrlab.errors import ConfigError, InputError
from cxrlab.models.weights import load_checkpoint, load_state
from cxrlab.transforms import ResizePadd, undo_resize_pad


def bf16_supported() -> bool:
    """bf16 autocast pays off on CPUs with native bf16 dot products (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → the first CUDA GPU when torch sees one, else the CPU; ``cuda`` without a GPU is an error."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no CUDA GPU (use device: auto or cpu)")
    return torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    if precision == "auto":
        if torch.device(device).type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if bf16_supported() else "fp32"
    return precision


def autocast(precision: str, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class LungSegmenter:
    """Inference with a trained model: letterbox → network → probabilities back at the input size →
    post-processing (largest component per lung, holes filled, sides decided anatomically)."""

    def __init__(self, model: SegmentationNet, config: SegmentationConfig, precision: str = "auto",
                 run_dir: Path | None = None, supervised_targets: Sequence[str] | None = None,
                 convention: str | None = None):
        self.model = model.eval()
        self.config = config
        # Channels the training data had; an unsupervised channel's output is noise and is never returned.
        self.supervised_targets = list(config.channels if supervised_targets is None else supervised_targets)
        unknown = set(self.supervised_targets) - set(config.channels)
        if unknown:
            raise InputError(run_dir or "segmenter", f"supervised targets {sorted(unknown)} are not model outputs "
                             f"{config.channels}", field="supervised_targets")
        self.precision = resolve_precision(precision)
        self.run_dir = run_dir
        self._resize = ResizePadd(config.size)
        self.convention = self._check_convention(convention)

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str = "best", precision: str = "auto",
                 convention: str | None = RUN_DEFAULT) -> "LungSegmenter":
        """``convention``: which annotators' lungs to draw (a name from the run's ``lung_conventions``);
        ``"shared"`` or None = the shared lung channels, trained on every source; by default the output the run
        recorded as generalizing best to unseen hospitals (``default_output.json``), else the shared channels.
        Masks are cut at the run's fitted threshold (``threshold.json``) when it has one, else the recipe's."""
        run_dir = Path(run_dir)
        recipe = run_dir / "recipe.yaml"
        if not run_dir.is_dir():
            raise InputError(run_dir, "segmentation run directory does not exist" if not run_dir.exists()
                             else "not a directory (a segmentation run directory is expected)")
        if not recipe.is_file():
            raise InputError(run_dir, "not a segmentation run directory (no recipe.yaml)")
        raw = read_yaml_mapping(recipe, "segmentation run recipe")
        if "arch" not in raw and "tasks" in raw:
            raise InputError(run_dir, "is a training (classification) run, not a lung segmentation run")
        try:
            cfg = load_config(raw)
        except ConfigError as exc:
            raise InputError(recipe, f"not a valid segmentation config for this cxrlab version ({exc}); was the "
                                     "run written by another version?") from None
        fitted = run_threshold(run_dir)  # a cut chosen on validation images after training (threshold.json)
        if fitted is not None:
            cfg = cfg.model_copy(update={"threshold": fitted})
        ckpt = run_dir / "checkpoints" / f"{checkpoint}.pt"
        state = load_checkpoint(ckpt)
        model = create_segmentation_model(cfg.arch, cfg.encoder, "none", cfg.in_channels, len(cfg.channels),
                                          **cfg.arch_kwargs)
        load_state(model, state["model"], ckpt, "segmentation network")
        if convention == RUN_DEFAULT:
            convention = run_default_convention(run_dir)
        # Runs written before targets were recorded supervised every target they name.
        return cls(model, cfg, precision, run_dir, state.get("supervised_targets"),
                   None if convention == SHARED else convention)

    @property
    def conventions(self) -> list[str]:
        """The lung conventions this model was trained for (each has its own lung channels)."""
        return [n for n in self.config.lung_conventions
                if convention_channel(schema.MASK_RIGHT_LUNG, n) in self.supervised_targets]

    def _check_convention(self, convention: str | None) -> str | None:
        if convention is not None and convention not in self.conventions:
            known = ", ".join(self.conventions) or "none: this model has only the shared lung channels"
            raise InputError(self.run_dir or "segmenter", f"unknown lung convention {convention!r} (trained: "
                             f"{known})", field="convention")
        return convention

    def use_convention(self, convention: str | None) -> None:
        """Draw the lungs as ``convention`` from now on (a name of the run's conventions; ``shared``/None = the
        shared channels); an unknown name is an ``InputError`` naming the trained ones."""
        self.convention = self._check_convention(None if convention == SHARED else convention)

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    def output_keys(self) -> list[str]:
        keys = [mask_key(c) for c in self.config.targets if c in self.supervised_targets]
        return keys + ([schema.KEY_LUNG_MASK] if self.config.is_lung_model else [])

    def example_input(self) -> torch.Tensor:
        """A ``(1, C, size, size)`` network input made from a phantom chest film (and its lung mask for
        image+lung models), prepared as a real image is: for engine choice, a film's masks say whether an engine
        agrees with fp32 far better than noise does (on noise a model draws stray blobs that any rounding moves)."""
        from cxrlab.data.phantom import render_sample

        film = render_sample("covid19", severity=0.5, size=max(self.config.size, 64), seed=0)
        lung = film[schema.KEY_LUNG_MASK] if self.in_channels == 2 else None
        return torch.from_numpy(self._prepare(film[schema.KEY_IMAGE], lung, 0)[0][None].copy())

    def network_inputs(self, images: Sequence[np.ndarray], lung_masks: Sequence[np.ndarray] | None = None
                       ) -> np.ndarray:
        """The ``N×C×size×size`` float32 batch the network sees for ``images`` (and their lung masks for
        image+lung models), prepared exactly as for prediction (e.g. int8 calibration inputs)."""
        lung_masks = list(lung_masks) if lung_masks is not None else [None] * len(images)
        return np.stack([self._prepare(im, lm, i)[0] for i, (im, lm) in enumerate(zip(images, lung_masks))])

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
    def probabilities(self, images: Sequence[np.ndarray], lung_masks: Sequence[np.ndarray] | None = None,
                      channels: Sequence[str] | None = None) -> list[np.ndarray]:
        """Per image a K×H×W float32 probability map at the image's own size: the output ``channels`` named, in
        that order (default: all of ``config.channels``). Taking only the channels needed matters: mapping each
        channel back to the image's size costs more than the network's share of an image."""
        index = [self.config.channels.index(c) for c in channels] if channels is not None else None
        lung_masks = list(lung_masks) if lung_masks is not None else [None] * len(images)
        if len(lung_masks) != len(images):
            raise InputError("predict_batch", f"{len(images)} images but {len(lung_masks)} lung masks")
        prepared = [self._prepare(im, lm, i) for i, (im, lm) in enumerate(zip(images, lung_masks))]
        if not prepared:
            return []
        x = torch.from_numpy(np.stack([p[0] for p in prepared]))
        with autocast(self.precision):
            logits = self.model(x)
            probs = torch.sigmoid(logits if index is None else logits[:, index]).float().numpy()
        return [undo_resize_pad(p, params, is_mask=False) for p, (_, params) in zip(probs, prepared)]

    def needed_channels(self, convention: str | None = "default", lungs_only: bool = False) -> list[str]:
        """The output channels ``postprocess`` reads for ``convention`` (``lungs_only``: the lung channels only)."""
        convention = self.convention if convention == "default" else self._check_convention(convention)
        names = [c for c in self.config.targets if c in self.supervised_targets
                 and not (lungs_only and c not in (schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG))]
        if convention is not None:  # its lung channels replace the shared ones (each is resized back: not free)
            sides = (schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG)
            names = [c for c in names if c not in sides] + [convention_channel(c, convention) for c in sides]
        return names

    def postprocess(self, probs: np.ndarray, convention: str | None = "default",
                    channels: Sequence[str] | None = None, lungs_only: bool = False) -> dict[str, np.ndarray]:
        """Probabilities (laid out as ``channels``, default all of ``config.channels``) → masks; ``convention``
        overrides the segmenter's own for this image; ``lungs_only`` skips the other targets (e.g. the heart)."""
        convention = self.convention if convention == "default" else self._check_convention(convention)
        t = self.config.threshold
        out: dict[str, np.ndarray] = {}
        channels = list(channels) if channels is not None else self.config.channels
        for col in self.config.targets:
            if lungs_only and self.config.is_lung_model:
                break
            if col not in (schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG) and col in self.supervised_targets:
                m = (probs[channels.index(col)] >= t).astype(np.uint8)
                out[mask_key(col)] = clean(m) if col == schema.MASK_HEART else m
        if self.config.is_lung_model:
            right, left = schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG
            if convention is not None:
                right, left = convention_channel(right, convention), convention_channel(left, convention)
            r, l = assign_lungs(probs[channels.index(right)], probs[channels.index(left)], t)
            out[schema.KEY_RIGHT_MASK], out[schema.KEY_LEFT_MASK] = r, l
            out[schema.KEY_LUNG_MASK] = (r | l).astype(np.uint8)
        return out

    def predict_batch(self, images: Sequence[np.ndarray], lung_masks: Sequence[np.ndarray] | None = None,
                      batch_size: int = 32, lungs_only: bool = False) -> list[dict[str, np.ndarray]]:
        """Masks (uint8 {0,1}, each at its image's size) for a list of images of any sizes. ``lungs_only``: a lung
        model's lung masks only (each other channel would be mapped back to full size and cleaned for nothing)."""
        lungs_only = lungs_only and self.config.is_lung_model
        channels = self.needed_channels(lungs_only=lungs_only)
        out: list[dict[str, np.ndarray]] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            masks = None if lung_masks is None else lung_masks[start:start + batch_size]
            out.extend(self.postprocess(p, channels=channels, lungs_only=lungs_only)
                       for p in self.probabilities(chunk, masks, channels))
        return out

    def predict(self, image: np.ndarray, lung_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``{"patient_right_mask", "patient_left_mask", "lung_mask", ("heart_mask")}`` at the image's size."""
        return self.predict_batch([image], None if lung_mask is None else [lung_mask])[0]

    def __repr__(self) -> str:
        c = self.config
        conv = f", convention={self.convention}" if self.convention else ""
        return f"LungSegmenter({c.arch}/{c.encoder}, size={c.size}, targets={c.targets}{conv}, run={self.run_dir})"


