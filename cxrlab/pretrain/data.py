"""The pretraining pool: manifests pooled, excluded patients/sources removed, labels per source, images cached.

Every row keeps its ``source_dataset``; diagnosis classes are per source (one head each), masks and view are
optional per row. ``build_pool`` returns the table; ``cache_arrays`` reads the images and masks once at the
run's size (uint8, under the run directory) so later epochs and a resumed run read nothing else.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.data.manifest import Manifest, load_manifest
from cxrlab.errors import ConfigError, InputError
from cxrlab.io import read_image, read_mask
from cxrlab.pretrain.config import PretrainConfig
from cxrlab.utils import atomic_path

SOURCE = schema.SOURCE_DATASET
MISSING = -1


@dataclass
class Pool:
    """The images a pretraining run sees, with integer targets (-1 = no label) and mask availability."""

    df: pd.DataFrame  # image, patient_id, source_dataset, _head, _diag, _view, mask columns used
    heads: dict[str, list[str]]  # source -> its diagnosis classes
    views: list[str]
    masks: list[str]  # segmentation target names with at least one mask in the pool
    excluded: dict[str, int] = field(default_factory=dict)

    @property
    def head_names(self) -> list[str]:
        return list(self.heads)


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == ""


def excluded_patients(manifests: list[str | Path]) -> set[str]:
    """Patient ids of the manifests given to ``--exclude-patients-of``."""
    out: set[str] = set()
    for path in manifests:
        out |= set(load_manifest(path).df[schema.PATIENT_ID].astype(str))
    return out


def build_pool(cfg: PretrainConfig, manifests: list[str | Path], exclude_patients_of: list[str | Path] = (),
               exclude_sources: list[str] = ()) -> Pool:
    if not manifests:
        raise ConfigError("no data: give at least one manifest (--data)")
    frames = []
    for path in manifests:
        m: Manifest = load_manifest(path)
        df = m.df.copy()
        df["_manifest"] = str(m.source)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True, sort=False)
    excluded = {}
    if exclude_sources:
        src = df[SOURCE].astype(str)
        drop = np.zeros(len(df), bool)
        for pattern in exclude_sources:
            hit = src.map(lambda s, p=pattern: fnmatch.fnmatch(s.lower(), p.lower()) or p.lower() in s.lower())
            if not hit.any():
                raise ConfigError(f"--exclude-sources {pattern!r} matches no source_dataset of the data "
                                  f"(sources: {', '.join(sorted(src.unique()))})")
            drop |= hit.to_numpy()
        excluded["source_images"] = int(drop.sum())
        df = df[~drop]
    if exclude_patients_of:
        patients = excluded_patients(exclude_patients_of)
        drop = df[schema.PATIENT_ID].astype(str).isin(patients).to_numpy()
        excluded["patient_images"] = int(drop.sum())
        excluded["patients_listed"] = len(patients)
        df = df[~drop]
    df = df.drop_duplicates(schema.IMAGE).reset_index(drop=True)
    if cfg.max_images_per_source:
        keep = [g.sample(min(len(g), cfg.max_images_per_source), random_state=cfg.seed).index
                for _, g in df.groupby(SOURCE, sort=True)]
        df = df.loc[sorted(np.concatenate(keep))].reset_index(drop=True)
    if df.empty:
        raise ConfigError("no image left for pretraining after the exclusions")
    sup = cfg.objectives.supervised
    unl = {v.lower() for v in sup.unlabeled_values}
    heads: dict[str, list[str]] = {}
    diag = np.full(len(df), MISSING, np.int64)
    head_of = np.full(len(df), MISSING, np.int64)
    for source, idx in df.groupby(SOURCE, sort=True).groups.items():
        rows = df.loc[idx]
        column = next((c for c in sup.diagnosis_columns if c in rows.columns and rows[c].notna().any()), None)
        if column is None:
            continue
        values = rows[column].map(lambda v: None if _blank(v) or str(v).strip().lower() in unl else str(v).strip())
        classes = sorted(v for v in values.dropna().unique())
        if len(classes) < 2:
            continue
        heads[str(source)] = classes
        h = len(heads) - 1
        pos = df.index.get_indexer(idx)
        head_of[pos] = h
        diag[pos] = values.map(lambda v: classes.index(v) if v is not None else MISSING).to_numpy()
    df["_head"], df["_diag"] = head_of, diag
    views = [v for v in sup.view_values
             if sup.view_column in df.columns and (df[sup.view_column].astype(str) == v).any()]
    if len(views) < 2:
        views = []
    df["_view"] = (df[sup.view_column].astype(str).map(lambda v: views.index(v) if v in views else MISSING)
                   if views else MISSING)
    masks = []
    for name, alternatives in sup.masks.items():
        chosen = pd.Series([None] * len(df), dtype=object)
        for alt in alternatives:
            cols = alt.split("+")
            if not all(c in df.columns for c in cols):
                continue
            have = df[cols].apply(lambda r: all(not _blank(v) for v in r), axis=1)
            fill = have & chosen.isna()
            chosen[fill] = df.loc[fill, cols].apply(lambda r: "+".join(map(str, r)), axis=1)
        if chosen.notna().any():
            masks.append(name)
            df[f"_mask_{name}"] = chosen
    return Pool(df, heads, views, masks, excluded)


def seen_table(pool: Pool) -> pd.DataFrame:
    """What the run sees: one row per image (path, patient, source, manifest, diagnosis label, masks)."""
    df = pool.df
    heads = pool.head_names
    out = pd.DataFrame({
        "image": df[schema.IMAGE].astype(str), "patient_id": df[schema.PATIENT_ID].astype(str),
        "source_dataset": df[SOURCE].astype(str), "manifest": df["_manifest"],
        "diagnosis_head": [heads[h] if h >= 0 else "" for h in df["_head"]],
        "diagnosis": [pool.heads[heads[h]][d] if h >= 0 and d >= 0 else "" for h, d in zip(df["_head"], df["_diag"])],
        "view": [pool.views[v] if v >= 0 else "" for v in df["_view"]],
    })
    for name in pool.masks:
        out[f"mask_{name}"] = df[f"_mask_{name}"].notna().astype(int)
    return out


def _square(image: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if min(image.shape[:2]) > size else cv2.INTER_LINEAR)
    return cv2.resize(image, (size, size), interpolation=interp)


def cache_arrays(pool: Pool, size: int, mask_size: int, path: Path, log=print) -> dict[str, np.ndarray]:
    """Images (N, size, size) uint8 and masks (N, K, mask_size, mask_size) uint8 0..255 (area-averaged: soft
    targets) with availability (N, K); read once and kept in ``path`` (an .npz under the run directory)."""
    path = Path(path)
    key = f"{len(pool.df)}-{size}-{mask_size}-{','.join(pool.masks)}"
    if path.is_file():
        data = dict(np.load(path, allow_pickle=False))
        if str(data.get("key")) == key and list(data["image_paths"]) == list(pool.df[schema.IMAGE].astype(str)):
            return data
    n, k = len(pool.df), len(pool.masks)
    images = np.zeros((n, size, size), np.uint8)
    masks = np.zeros((n, max(k, 1), mask_size, mask_size), np.uint8)
    have = np.zeros((n, max(k, 1)), np.uint8)
    for i, row in enumerate(pool.df.itertuples(index=False)):
        image_path = getattr(row, schema.IMAGE)
        img, _ = read_image(str(image_path))
        images[i] = np.clip(_square(np.asarray(img, np.float32), size) * 255 + 0.5, 0, 255).astype(np.uint8)
        for j, name in enumerate(pool.masks):
            spec = pool.df.at[i, f"_mask_{name}"]
            if spec is None or (isinstance(spec, float) and np.isnan(spec)):
                continue
            union = None
            for part in str(spec).split("+"):
                m = read_mask(part).astype(np.float32)
                if m.max() > 1:
                    m = m / 255.0
                union = m if union is None else np.maximum(union, cv2.resize(m, union.shape[::-1],
                                                                             interpolation=cv2.INTER_NEAREST))
            masks[i, j] = np.clip(cv2.resize(union, (mask_size, mask_size), interpolation=cv2.INTER_AREA) * 255
                                  + 0.5, 0, 255).astype(np.uint8)
            have[i, j] = 1
        if (i + 1) % 500 == 0:
            log(f"cached {i + 1}/{n} images")
    data = {"images": images, "masks": masks, "have": have, "key": np.array(key),
            "image_paths": np.array(pool.df[schema.IMAGE].astype(str).tolist())}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **data)
    return data
