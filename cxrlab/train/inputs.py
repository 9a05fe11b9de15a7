"""From manifest rows to model inputs: read, CLAHE/sharpen, ROI scheme, resize-and-pad, channel stack.

The deterministic part runs once per image (with ``num_workers`` processes) and is cached on disk, keyed by
the image file and the input spec; random augmentation is applied afterwards, per epoch, from a seed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from cxrlab.anatomy.roi import ROI_SCHEMES
from cxrlab.data import schema
from cxrlab.data.dataset import load_sample
from cxrlab.errors import ConfigError, InputError, reraise_worker_errors
from cxrlab.recipes.schema import InputSpec
from cxrlab.transforms import CLAHEd, ResizePadd, UnsharpMaskd, build_transforms
from cxrlab.utils import atomic_path

# Light geometric + intensity jitter used when a strategy needs augmentation and the recipe names none.
DEFAULT_AUGMENT: list[dict[str, Any]] = [{"name": "rand_affine", "rotate": 10, "scale": [0.9, 1.1],
                                          "translate": 0.05}, {"name": "rand_gamma", "log_range": 0.2}]
# ROI schemes that read lung masks (from the manifest, or predicted by a lung model).
_LUNG_MASK_COLUMNS = [schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG, schema.MASK_LUNGS]


# ``clahe: true``: the ICU paper's example ``histeq='True_.04_8'`` (cv2 clipLimit 0.04·8·8 = 2.56, 8×8 tiles).
PAPER_CLAHE = "True_.04_8"


def spec_hash(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


class InputPipeline:
    """The recipe's ``input`` section as code: ``prepare(sample) -> [C×H×W float32]`` (one per ROI output)."""

    def __init__(self, spec: InputSpec):
        self.spec = spec
        self.roi = ROI_SCHEMES.create(spec.roi, **spec.roi_options)
        meta = ROI_SCHEMES.meta(spec.roi)
        self.per_image: int = int(meta.get("per_image", 1))
        self.in_chans: int = int(meta.get("in_channels", 1))
        self.pre = []
        if spec.clahe not in (False, "False", None):
            self.pre.append(CLAHEd(histeq=spec.clahe if isinstance(spec.clahe, str) else PAPER_CLAHE))
        if spec.sharpen:
            self.pre.append(UnsharpMaskd())
        self.resize = ResizePadd(spec.size)

    @property
    def patches(self):
        """The ``input.patches`` spec in patch mode (see :mod:`cxrlab.train.patch_mode`), else None."""
        return self.spec.patches

    @property
    def needs_masks(self) -> bool:
        return self.spec.roi != "none" or self.spec.patches is not None

    def key(self) -> str:
        """Identifies the deterministic preprocessing (cache key part)."""
        parts = {k: getattr(self.spec, k) for k in ("size", "roi", "roi_options", "clahe", "sharpen")}
        if self.spec.patches is not None:  # the cached input is then the masked canvas (patches are cut later)
            parts["patch_canvas"] = self.spec.patches.canvas
        return spec_hash(parts)

    def mask_columns(self, df: pd.DataFrame) -> list[str]:
        if self.spec.mask_columns is not None:
            return list(self.spec.mask_columns)
        if not self.needs_masks:
            return []
        if {schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG} <= set(df.columns):
            return [schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG]
        if schema.MASK_LUNGS in df.columns:
            return [schema.MASK_LUNGS]
        needs = "input.patches" if self.spec.patches is not None else f"input.roi={self.spec.roi}"
        raise InputError("manifest", f"{needs} needs lung masks: none of the columns {_LUNG_MASK_COLUMNS} is "
                         "present (or give --lung-model RUN)")

    def prepare(self, sample: dict) -> list[np.ndarray]:
        for t in self.pre:
            sample = t(sample)
        if self.spec.patches is not None:
            from cxrlab.train.patch_mode import canvas_input

            return [canvas_input(sample, self.spec.patches)]
        out = []
        for s in self.roi(sample):
            s = self.resize({schema.KEY_IMAGE: s[schema.KEY_IMAGE], schema.KEY_META: s.get(schema.KEY_META, {})})
            image = np.asarray(s[schema.KEY_IMAGE], dtype=np.float32)
            out.append(image[None] if image.ndim == 2 else image)
        if len(out) != self.per_image:
            raise InputError(sample.get(schema.KEY_META, {}).get("image", "<sample>"),
                             f"ROI {self.spec.roi} gave {len(out)} inputs, expected {self.per_image}")
        return out

    def prepare_with_lungs(self, sample: dict) -> list[tuple[np.ndarray, np.ndarray | None, list[dict[str, Any]]]]:
        """Like ``prepare`` but the lung masks travel too: ``[(C×H×W input, H×W lungs or None, applied steps)]``.

        Explanation (heatmap-in-lung concordance) and the service's overlays need the lungs in the model's frame
        and the geometric steps that led there.
        """
        if self.spec.patches is not None:
            raise ConfigError("a patch-mode run (input.patches) has no single model input per image: explanation "
                              "and the service's overlays are not wired for patch runs yet "
                              "(cxrlab.patches.probabilistic_patch_cam is the building block)")
        for t in self.pre:
            sample = t(sample)
        out = []
        for s in self.roi(sample):
            s = self.resize(s)
            masks = [np.asarray(s[k]) for k in (schema.KEY_LUNG_MASK, schema.KEY_RIGHT_MASK, schema.KEY_LEFT_MASK)
                     if k in s]
            lungs = (np.maximum.reduce(masks) > 0).astype(np.uint8) if masks else None
            image = np.asarray(s[schema.KEY_IMAGE], dtype=np.float32)
            out.append((image[None] if image.ndim == 2 else image, lungs,
                        list(s.get(schema.KEY_META, {}).get("applied", []))))
        return out

    def augment_specs(self, force: bool) -> list:
        """The random augmentation entries training uses (``force``: the default set when none is configured)."""
        if self.spec.patches is not None:
            return []  # the schema refuses input.augment in patch mode; random patches vary every step instead
        return list(self.spec.augment or (DEFAULT_AUGMENT if force else []))

    def augmenter(self, force: bool) -> Callable | None:
        specs = self.augment_specs(force)
        return build_transforms(specs, seed=0) if specs else None


class _RowInputs(Dataset):
    def __init__(self, df: pd.DataFrame, pipeline: InputPipeline, mask_columns: list[str]):
        self.df, self.pipeline, self.mask_columns = df.reset_index(drop=True), pipeline, mask_columns

    def __len__(self) -> int:
        return len(self.df)

    def __getitem__(self, i: int) -> np.ndarray:
        sample = load_sample(self.df.iloc[i], self.mask_columns, label_columns=[])
        return np.stack(self.pipeline.prepare(sample))


def image_key(row: pd.Series, mask_columns: Sequence[str]) -> str:
    """Cache identity of a row's inputs: file paths, sizes and modification times of image and masks."""
    parts = []
    for col in [schema.IMAGE, *mask_columns]:
        path = row.get(col)
        if isinstance(path, str) and path:
            try:
                st = os.stat(path)
            except OSError as exc:
                raise InputError(path, "file does not exist" if isinstance(exc, FileNotFoundError)
                                 else f"cannot read file: {exc.strerror or exc}", field=col) from None
            parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


class TensorStore:
    """A dict of tensors in one file (keyed by strings), loaded whole and rewritten atomically when it grows."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, torch.Tensor] = {}
        if path.is_file():
            try:
                self.data = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # a cache is disposable: rebuild rather than fail
                self.data = {}

    def missing(self, keys: Sequence[str]) -> list[int]:
        return [i for i, k in enumerate(keys) if k not in self.data]

    def stack(self, keys: Sequence[str]) -> torch.Tensor:
        return torch.stack([self.data[k] for k in keys])

    def add(self, keys: Sequence[str], values: torch.Tensor) -> None:
        for k, v in zip(keys, values):
            self.data[k] = v.clone()

    def save(self) -> None:
        with atomic_path(self.path) as tmp:
            torch.save(self.data, tmp)


def prepare_inputs(df: pd.DataFrame, pipeline: InputPipeline, cache_dir: Path | None, num_workers: int = 2,
                   on_progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """``(rows, per_image, C, H, W)`` float16 inputs for ``df`` (absolute paths), from cache where possible."""
    masks = pipeline.mask_columns(df)
    for col in masks:
        if col not in df.columns:
            raise InputError("manifest", f"input.roi={pipeline.spec.roi} needs this mask column", field=col)
    keys = [image_key(row, masks) for _, row in df.iterrows()]
    store = TensorStore(cache_dir / f"inputs-{pipeline.key()}.pt") if cache_dir else None
    todo = list(range(len(df))) if store is None else store.missing(keys)
    if todo:
        ds = _RowInputs(df.iloc[todo], pipeline, masks)
        workers = min(num_workers, max(0, len(todo) // 16))
        loader = DataLoader(ds, batch_size=8, num_workers=workers, collate_fn=lambda b: b,
                            persistent_workers=False)
        done, arrays = 0, []
        with reraise_worker_errors():  # a bad file read in a worker: its InputError, not a wrapped traceback
            for batch in loader:
                arrays.extend(torch.from_numpy(a).half() for a in batch)
                done += len(batch)
                if on_progress:
                    on_progress(done, len(todo))
        fresh = torch.stack(arrays)
        if store is None:
            return fresh
        store.add([keys[i] for i in todo], fresh)
        store.save()
    if store is None:
        raise ConfigError("no rows to prepare")
    return store.stack(keys)


class AugmentedItems(Dataset):
    """Training items with seeded random augmentation: item ``i`` of epoch ``e`` always gets the same draw.

    ``(image, targets)`` per item. The targets travel in the sample as labels named ``target_names``, so a
    transform that mirrors the image mirrors them too (``hflip``: patient-right ↔ patient-left grades, Brixia
    zones A-C ↔ D-F). A side label whose mirror is not among the targets comes back NaN (no loss): the run does
    not know the grade of the lung that now stands on that side.
    """

    def __init__(self, inputs: torch.Tensor, order: np.ndarray, augment: Callable, seed: int,
                 targets: np.ndarray, target_names: Sequence[str], draw_keys: Sequence[int] | None = None):
        if len(set(target_names)) != len(target_names):
            raise ConfigError(f"target columns must be unique to follow augmentation, got {list(target_names)}")
        if targets.shape[1] != len(target_names):
            raise ConfigError(f"{targets.shape[1]} target columns but {len(target_names)} names")
        self.inputs, self.order, self.augment, self.seed = inputs, order, augment, seed
        self.targets, self.target_names = targets, list(target_names)
        # the draw of position ``pos`` is seeded by (seed, pos), or by (seed, draw_keys[pos]) when given: a cached
        # view must not change with the order it is computed in
        self.draw_keys = draw_keys

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, pos if self.draw_keys is None else int(self.draw_keys[pos])])
        item = self.order[pos]
        labels = dict(zip(self.target_names, self.targets[item].tolist()))
        sample = {schema.KEY_IMAGE: self.inputs[item].float().numpy(), schema.KEY_LABELS: labels,
                  schema.KEY_META: {}}
        out = self.augment(sample, rng)
        moved = out.get(schema.KEY_LABELS) or {}
        targets = np.array([moved.get(name, np.nan) for name in self.target_names], dtype=np.float32)
        return (torch.from_numpy(np.ascontiguousarray(out[schema.KEY_IMAGE], dtype=np.float32)),
                torch.from_numpy(targets))
