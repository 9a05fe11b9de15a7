"""Training data for segmentation: manifests → a patient-level split → an in-memory cache → a torch Dataset.

Per-source handling (the decisions the docs describe):
- Column mapping (``column_map``) renames a source's own mask columns (e.g. ``mask_v7_right_lung``) to the
  canonical ones before anything else.
- A target missing in a row (the heart outside JSRT/SCR) is not "background": that channel is ignored in
  the loss for that image (per-channel validity).
- Right/left lungs missing but ``mask_lungs`` present: split into patient-right/left by connected components.
- Sources matching ``retrocardiac_excluded_sources`` (SCR) draw lungs WITHOUT the retrocardiac part; V7 and
  COVID-QU-Ex include it. cxrlab's lung channels follow the inclusive convention, so for SCR images the
  lung channels ignore the pixels inside the heart mask (no supervision either way) instead of teaching
  "not lung" there.
- Every image is letterboxed to ``size`` keeping its own aspect. COVID-QU-Ex was squashed to 256×256 by its
  authors and the original aspect is unknown, so it cannot be undone; its masks are consistent with its
  pixels, and the aspect jitter of the augmentation (``augment.aspect``) keeps the model indifferent to it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cxrlab.anatomy.config import SegmentationConfig
from cxrlab.anatomy.postprocess import split_lungs
from cxrlab.data import schema
from cxrlab.data.dataset import load_sample, mask_key
from cxrlab.data.manifest import load_manifest
from cxrlab.data.splits import assert_patient_disjoint, load_split, split_patients
from cxrlab.errors import ConfigError, InputError
from cxrlab.transforms import Compose, RandAffined, RandGammad, RandHFlipd, ResizePadd

IGNORE_KEY = "ignore_mask"


def _has(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def load_table(cfg: SegmentationConfig) -> pd.DataFrame:
    """Concatenate the config's manifests (columns mapped), keep rows with at least one target."""
    if not cfg.manifests:
        raise ConfigError("segmentation config: 'manifests' is empty (give one or more manifest paths)")
    frames = []
    for path in cfg.manifests:
        df = load_manifest(path).df.rename(columns=cfg.column_map)
        df = df.loc[:, ~df.columns.duplicated(keep="last")]
        frames.append(df)
    df = pd.concat(frames, ignore_index=True, sort=False)
    if cfg.sources is not None:
        keep = df[schema.SOURCE_DATASET].astype(str).map(lambda s: any(fnmatch.fnmatch(s, p) for p in cfg.sources))
        df = df[keep].reset_index(drop=True)
    for col in {*cfg.targets, cfg.input_mask_column, schema.MASK_LUNGS, schema.MASK_HEART}:
        if col not in df.columns:
            df[col] = None
    lungs_only = df[schema.MASK_LUNGS].map(_has)
    any_target = df[cfg.targets].map(_has).any(axis=1)
    if cfg.is_lung_model:
        any_target |= lungs_only
    if cfg.input == "image+lung":
        any_target &= df[cfg.input_mask_column].map(_has) | (
            df[schema.MASK_RIGHT_LUNG].map(_has) & df[schema.MASK_LEFT_LUNG].map(_has))
    df = df[any_target].reset_index(drop=True)
    if df.empty:
        raise InputError(", ".join(cfg.manifests), f"no row has any target mask {cfg.targets}")
    if cfg.group_column is not None:
        if cfg.group_column not in df.columns:
            raise ConfigError(f"group_column {cfg.group_column!r} is not a column of the manifests "
                              f"({', '.join(cfg.manifests)})")
        missing = df[cfg.group_column].isna() | (df[cfg.group_column].astype(str).str.strip() == "")
        if missing.any():
            raise InputError(", ".join(cfg.manifests), f"{int(missing.sum())} row(s) have no {cfg.group_column} "
                             f"(group_column), e.g. {df.loc[missing, schema.IMAGE].iloc[0]}",
                             field=cfg.group_column)
    dup = df[schema.IMAGE].duplicated()
    if dup.any():
        raise InputError(", ".join(cfg.manifests), f"{int(dup.sum())} image(s) listed twice, e.g. "
                         f"{df.loc[dup, schema.IMAGE].iloc[0]}", field=schema.IMAGE)
    return df


def assign_split(df: pd.DataFrame, cfg: SegmentationConfig) -> pd.DataFrame:
    """Add a patient-level ``split`` column (or reuse ``split.split_csv``) and check for leakage."""
    df = df.copy()
    if cfg.split.split_csv:
        saved = load_split(cfg.split.split_csv)
        df["split"] = df[schema.IMAGE].map(dict(zip(saved[schema.IMAGE], saved["split"])))
        if df["split"].isna().any():
            raise InputError(cfg.split.split_csv, f"{int(df['split'].isna().sum())} image(s) have no split, e.g. "
                             f"{df.loc[df['split'].isna(), schema.IMAGE].iloc[0]}")
    else:
        s = cfg.split
        ratios = (1 - s.val_fraction - s.test_fraction, s.val_fraction, s.test_fraction)
        df["split"] = split_patients(df, ratios, seed=s.seed,
                                     stratify=group_column(cfg) if s.by_source else None).to_numpy()
    assert_patient_disjoint(df)
    return df


@dataclass
class Cached:
    """All images and targets letterboxed to ``size``: uint8 arrays, built once (real data fits in memory)."""

    images: np.ndarray        # N×H×W uint8 (image * 255)
    inputs: np.ndarray | None  # N×H×W uint8 extra input channel (lung mask) or None
    targets: np.ndarray       # N×K×H×W uint8 {0,1}
    valid: np.ndarray         # N×K bool: channel supervised for this image
    ignore: np.ndarray        # N×H×W uint8: 1 where lung channels are unsupervised (SCR retrocardiac)
    sources: np.ndarray       # N source names
    groups: np.ndarray | None = None  # N sampling groups (``group_column``); None = the sources

    def __post_init__(self) -> None:
        if self.groups is None:
            self.groups = self.sources


def group_column(cfg: SegmentationConfig) -> str:
    """The column whose values are the sampling groups: ``group_column``, else ``source_dataset``."""
    return cfg.group_column or schema.SOURCE_DATASET


def _row_arrays(row: pd.Series, cfg: SegmentationConfig) -> tuple:
    wanted = [c for c in {*cfg.targets, schema.MASK_LUNGS, schema.MASK_HEART, cfg.input_mask_column}
              if _has(row.get(c))]
    sample = load_sample(row, mask_columns=sorted(wanted), label_columns=[])
    source = str(row.get(schema.SOURCE_DATASET))
    if cfg.is_lung_model or cfg.input == "image+lung":
        r, l = mask_key(schema.MASK_RIGHT_LUNG), mask_key(schema.MASK_LEFT_LUNG)
        lungs = sample.get(mask_key(schema.MASK_LUNGS))
        if (r not in sample or l not in sample) and lungs is not None:
            sample[r], sample[l] = split_lungs(lungs)
        if lungs is None and r in sample and l in sample:
            sample[mask_key(schema.MASK_LUNGS)] = (sample[r] | sample[l]).astype(np.uint8)
    excluded = any(fnmatch.fnmatch(source, p) for p in cfg.retrocardiac_excluded_sources)
    heart = sample.get(mask_key(schema.MASK_HEART))
    sample[IGNORE_KEY] = heart.copy() if (excluded and heart is not None) else np.zeros_like(
        sample[schema.KEY_IMAGE], dtype=np.uint8)
    sample = ResizePadd(cfg.size)(sample)
    h = w = cfg.size
    targets = np.zeros((len(cfg.targets), h, w), np.uint8)
    valid = np.zeros(len(cfg.targets), bool)
    for k, col in enumerate(cfg.targets):
        m = sample.get(mask_key(col))
        if m is not None:
            targets[k], valid[k] = m, True
    extra = None
    if cfg.input == "image+lung":
        extra = sample.get(mask_key(cfg.input_mask_column))
        if extra is None:
            extra = sample.get(mask_key(schema.MASK_LUNGS))
    image = np.round(np.clip(sample[schema.KEY_IMAGE], 0, 1) * 255).astype(np.uint8)
    return image, extra, targets, valid, sample[IGNORE_KEY], source


def build_cache(df: pd.DataFrame, cfg: SegmentationConfig, on_item=None) -> Cached:
    n, k, s = len(df), len(cfg.targets), cfg.size
    images = np.zeros((n, s, s), np.uint8)
    inputs = np.zeros((n, s, s), np.uint8) if cfg.input == "image+lung" else None
    targets = np.zeros((n, k, s, s), np.uint8)
    valid = np.zeros((n, k), bool)
    ignore = np.zeros((n, s, s), np.uint8)
    sources = np.empty(n, dtype=object)
    for i, (_, row) in enumerate(df.iterrows()):
        images[i], extra, targets[i], valid[i], ignore[i], sources[i] = _row_arrays(row, cfg)
        if inputs is not None:
            inputs[i] = extra
        if on_item:
            on_item(i + 1, n)
    groups = df[cfg.group_column].astype(str).to_numpy(dtype=object) if cfg.group_column else None
    return Cached(images, inputs, targets, valid, ignore, sources, groups)


def augmentation(cfg: SegmentationConfig) -> Compose:
    a = cfg.augment
    steps = [RandAffined(rotate=a.rotate, scale=a.scale, translate=a.translate, aspect=a.aspect, p=0.9)]
    if a.gamma > 0:
        steps.append(RandGammad(log_range=a.gamma, p=0.5))
    if a.hflip > 0:
        steps.append(RandHFlipd(p=a.hflip))
    return Compose(steps, seed=cfg.seed)


class SegmentationDataset(Dataset):
    """Items ``(x C×H×W float, y K×H×W float, w K×H×W float)`` from the cache; ``w`` is the loss weight
    (0 for unsupervised channels and, in lung channels, SCR's retrocardiac region). Augmentation is seeded
    per (seed, epoch, index), so an epoch is reproducible whatever order the items are drawn in."""

    def __init__(self, cache: Cached, indices: np.ndarray, cfg: SegmentationConfig, train: bool):
        self.cache, self.indices, self.cfg, self.train = cache, np.asarray(indices), cfg, train
        self.keys = [mask_key(c) for c in cfg.targets]
        self.lung_channels = np.array([c in (schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG, schema.MASK_LUNGS)
                                       for c in cfg.targets])
        # Convention channels copy the image's own right/left lungs, supervised only for its convention.
        names = list(cfg.lung_conventions)
        self.image_convention = np.array([names.index(cfg.convention_of(str(s))) if cfg.convention_of(str(s))
                                          else -1 for s in cache.sources])
        self.side_channels = [cfg.targets.index(c) for c in (schema.MASK_RIGHT_LUNG, schema.MASK_LEFT_LUNG)] \
            if names else []
        self.augment = augmentation(cfg) if (train and cfg.augment.enabled) else None
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int):
        i = int(self.indices[item])
        c = self.cache
        sample = {schema.KEY_IMAGE: c.images[i].astype(np.float32) / 255.0, IGNORE_KEY: c.ignore[i]}
        for key, t in zip(self.keys, c.targets[i]):
            sample[key] = t
        if c.inputs is not None:
            sample["input_lung_mask"] = c.inputs[i]
        valid = c.valid[i].copy()
        if self.augment is not None:
            rng = np.random.default_rng([self.cfg.seed, self.epoch, i])
            sample = self.augment(sample, rng)
            if any(step["name"] == "hflip" for step in sample.get(schema.KEY_META, {}).get("applied", [])):
                order = [self.keys.index(schema.KEY_LEFT_MASK) if k == schema.KEY_RIGHT_MASK else
                         self.keys.index(schema.KEY_RIGHT_MASK) if k == schema.KEY_LEFT_MASK else j
                         for j, k in enumerate(self.keys)]
                valid = valid[order]
        x = sample[schema.KEY_IMAGE][None]
        if c.inputs is not None:
            x = np.concatenate([x, sample["input_lung_mask"][None].astype(np.float32)])
        y = np.stack([sample.get(k, np.zeros_like(c.ignore[i])) for k in self.keys]).astype(np.float32)
        w = np.broadcast_to(valid[:, None, None], y.shape).astype(np.float32)
        w[self.lung_channels] *= 1.0 - sample[IGNORE_KEY][None].astype(np.float32)
        if self.side_channels:
            # No retrocardiac ignore here: a convention channel learns its annotators' lungs as drawn (SCR's too).
            extra_w = [np.full(y.shape[1:], float(valid[c] and self.image_convention[i] == j), np.float32)
                       for j in range(len(self.cfg.lung_conventions)) for c in self.side_channels]
            y = np.concatenate([y, np.tile(y[self.side_channels], (len(self.cfg.lung_conventions), 1, 1))])
            w = np.concatenate([w, np.stack(extra_w)])
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), torch.from_numpy(w)


def balanced_draw(sources: np.ndarray, n: int, rng: np.random.Generator,
                  weights: dict[str, float] | None = None) -> np.ndarray:
    """``n`` positions drawn so each group (a source, or any label: ``group_column``) contributes equally, or in
    proportion to ``weights`` (fnmatch pattern → relative weight; every group must match one pattern).
    Replacement only when a group must."""
    names = sorted(set(sources))
    groups = [np.flatnonzero(sources == s) for s in names]
    if weights is None:
        per = int(np.ceil(n / len(groups)))
        picks = [rng.choice(g, size=per, replace=len(g) < per) for g in groups]
        return rng.permutation(np.concatenate(picks))[:n]
    w = np.array([source_weight(name, weights) for name in names], dtype=float)
    share = n * w / w.sum()
    counts = np.floor(share).astype(int)
    counts[np.argsort(counts - share)[: n - counts.sum()]] += 1  # largest remainders
    picks = [rng.choice(g, size=k, replace=len(g) < k) for g, k in zip(groups, counts) if k]
    return rng.permutation(np.concatenate(picks))


def balanced_subset(sources: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``cap`` sorted positions, as equal per source as the sources' sizes allow (a small source is
    taken whole and its unused share goes to the others), so a per-source score sees every source."""
    groups = {s: np.flatnonzero(sources == s) for s in sorted(set(sources))}
    quota = dict.fromkeys(groups, 0)
    left = cap
    while left > 0:
        open_ = [s for s in groups if quota[s] < len(groups[s])]
        if not open_:
            break
        share = max(left // len(open_), 1)
        for s in open_:
            take = min(share, len(groups[s]) - quota[s], left)
            quota[s] += take
            left -= take
    picks = [rng.choice(g, size=quota[s], replace=False) for s, g in groups.items() if quota[s]]
    return np.sort(np.concatenate(picks)) if picks else np.array([], dtype=int)


def source_weight(source: str, weights: dict[str, float]) -> float:
    for pattern, weight in weights.items():
        if fnmatch.fnmatch(source, pattern):
            return float(weight)
    raise ConfigError(f"source_weights: no pattern matches source {source!r} (patterns {sorted(weights)})")
