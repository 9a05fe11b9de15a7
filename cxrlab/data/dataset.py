"""Sample dicts from Manifest rows, and a torch ``Dataset`` over a Manifest.

A sample is ``{"image": float32 HxW [0, 1], <mask key>: uint8 HxW {0, 1}, ..., "labels": {column: value},
"meta": {"image": path, "patient_id": ..., ...}}`` with the keys of :mod:`cxrlab.data.schema`; transforms
(``cxrlab.transforms``) take and return such dicts.

>>> ds = ManifestDataset(load_manifest("data/phantom"), mask_columns=["mask_lungs"], label_columns=["finding"])
>>> sample = ds[0]; sample["lung_mask"].shape == sample["image"].shape
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cxrlab.data import schema
from cxrlab.data.manifest import Manifest
from cxrlab.errors import InputError
from cxrlab.io import read_image, read_mask

META_COLUMNS = list(schema.CORE_COLUMNS)


def mask_key(column: str) -> str:
    """Sample-dict key of a mask column: the schema's key, else ``<name>_mask`` (mask_consolidation -> consolidation_mask)."""
    return schema.MASK_COLUMN_TO_KEY.get(column, f"{column.removeprefix('mask_')}_mask")


def _missing(value: Any) -> bool:
    """None, NaN/NA/NaT or a blank string: the ways a CSV or Parquet cell says 'nothing here'."""
    if isinstance(value, str):
        return not value.strip()
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _plain(value: Any) -> Any:
    """numpy/pandas scalars -> Python scalars; missing -> None (so samples serialise and compare simply)."""
    if _missing(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def default_label_columns(columns: Sequence[str]) -> list[str]:
    """Every column that is neither a core column nor a mask column (the Manifest's label columns)."""
    return [c for c in columns if c not in schema.CORE_COLUMNS and not c.startswith("mask_")]


def load_sample(row: Mapping[str, Any] | pd.Series, mask_columns: Sequence[str] | None = None,
                label_columns: Sequence[str] | None = None) -> dict:
    """Read one Manifest row (absolute paths) into a sample dict.

    ``mask_columns=None`` loads every ``mask_*`` column that has a file in this row; masks named explicitly
    must exist (else ``InputError``). ``label_columns=None`` takes every non-core, non-mask column.
    """
    row = dict(row)
    if _missing(row.get(schema.IMAGE)):
        raise InputError("manifest row", "no image path", field=schema.IMAGE)
    path = str(row[schema.IMAGE])
    image, _header = read_image(path)
    sample: dict[str, Any] = {schema.KEY_IMAGE: image}
    explicit = mask_columns is not None
    columns = mask_columns if explicit else [c for c in row if c.startswith("mask_")]
    for column in columns:
        value = row.get(column)
        if _missing(value):
            if explicit:
                raise InputError(path, "this image has no mask for the requested column", field=column)
            continue
        sample[mask_key(column)] = read_mask(str(value), expected_shape=image.shape)
    labels = default_label_columns(list(row)) if label_columns is None else label_columns
    absent = [c for c in labels if c not in row]
    if absent:
        raise InputError(path, f"label column(s) not in the manifest: {', '.join(absent)}")
    sample[schema.KEY_LABELS] = {c: _plain(row[c]) for c in labels}
    sample[schema.KEY_META] = {c: _plain(row[c]) for c in META_COLUMNS if c in row}
    return sample


class ManifestDataset(Dataset):
    """A torch Dataset yielding sample dicts for the rows of a Manifest (or a DataFrame with absolute paths).

    ``transform`` is any callable taking and returning a sample dict (e.g. a ``cxrlab.transforms.Compose``).
    """

    def __init__(self, manifest_or_df: Manifest | pd.DataFrame, transform: Callable[[dict], dict] | None = None,
                 mask_columns: Sequence[str] | None = None, label_columns: Sequence[str] | None = None):
        df = manifest_or_df.df if isinstance(manifest_or_df, Manifest) else manifest_or_df
        for column in [schema.IMAGE, *(mask_columns or []), *(label_columns or [])]:
            if column not in df.columns:
                raise InputError("manifest", "column not found", field=column)
        self.df = df.reset_index(drop=True)
        self.transform = transform
        self.mask_columns = list(mask_columns) if mask_columns is not None else None
        self.label_columns = list(label_columns) if label_columns is not None else None

    def __len__(self) -> int:
        return len(self.df)

    def __getitem__(self, index: int) -> dict:
        sample = load_sample(self.df.iloc[index], self.mask_columns, self.label_columns)
        return self.transform(sample) if self.transform is not None else sample


def collate_samples(batch: Sequence[dict]) -> dict:
    """Batch sample dicts: arrays/tensors are stacked into tensors; ``labels``/``meta`` become column lists."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [s[key] for s in batch]
        if key in (schema.KEY_LABELS, schema.KEY_META):
            out[key] = {k: [v.get(k) for v in values] for k in values[0]}
        elif isinstance(values[0], (np.ndarray, torch.Tensor)):
            out[key] = torch.stack([torch.as_tensor(v) for v in values])
        else:
            out[key] = values
    return out
