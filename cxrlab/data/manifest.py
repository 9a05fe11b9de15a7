"""The Manifest: one table, one row per image, with paths resolved against the manifest's folder.

>>> m = load_manifest("data/phantom/manifest.csv")
>>> m.df[["image", "patient_id", "finding"]].head()
>>> save_manifest(m, "out/manifest.parquet")
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cxrlab.data import schema
from cxrlab.errors import InputError
from cxrlab.utils import atomic_path

PATH_COLUMNS = [schema.IMAGE, *schema.MASK_COLUMNS]


@dataclass
class Manifest:
    """A table of images. ``df`` holds absolute paths in the image and mask columns."""

    df: pd.DataFrame
    source: Path | None = None  # the file it was read from, if any
    attrs: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.df)

    @property
    def patients(self) -> list[str]:
        return sorted(self.df[schema.PATIENT_ID].astype(str).unique())

    def mask_columns(self) -> list[str]:
        return [c for c in self.df.columns if c.startswith("mask_")]

    def label_columns(self) -> list[str]:
        known = set(schema.CORE_COLUMNS) | set(self.mask_columns())
        return [c for c in self.df.columns if c not in known]

    def subset(self, rows) -> "Manifest":
        return Manifest(self.df.loc[rows].reset_index(drop=True), self.source, dict(self.attrs))


def _path_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c == schema.IMAGE or c.startswith("mask_")]


def _resolve(df: pd.DataFrame, root: Path) -> pd.DataFrame:
    df = df.copy()
    for col in _path_columns(df):
        def absolute(p):
            if p is None or (isinstance(p, float) and pd.isna(p)) or str(p).strip() == "":
                return None
            p = Path(str(p))
            return str(p if p.is_absolute() else (root / p).resolve())

        df[col] = df[col].map(absolute).astype(object)
    return df


def _relativise(df: pd.DataFrame, root: Path) -> pd.DataFrame:
    df = df.copy()
    root = root.resolve()
    for col in _path_columns(df):
        def relative(p):
            if p is None or (isinstance(p, float) and pd.isna(p)) or str(p) == "":
                return ""
            try:
                return os.path.relpath(str(p), root)
            except ValueError:  # other drive: keep absolute
                return str(p)

        df[col] = df[col].map(relative)
    return df


TABLE_SUFFIXES = {".csv", ".txt", ".parquet"}


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise InputError(path, f"broken symbolic link (points to {os.readlink(path)}, which does not exist)")
    if not path.exists():
        raise InputError(path, "manifest file does not exist")
    if path.is_dir():
        raise InputError(path, "is a directory, not a manifest file")
    if path.suffix not in TABLE_SUFFIXES:
        raise InputError(path, "unsupported manifest format (use .csv or .parquet)")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file (no header row)")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        header = list(pd.read_csv(path, nrows=1, header=None, dtype=str).iloc[0])  # pandas renames repeats
        twice = sorted({str(c) for c in header if header.count(c) > 1})
        if twice:
            raise InputError(path, f"column(s) {', '.join(twice)} appear more than once in the header")
        return pd.read_csv(path, dtype={schema.PATIENT_ID: str, schema.STUDY_ID: str}, keep_default_na=True,
                           low_memory=False)
    except InputError:
        raise
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not a text table (byte {exc.start} is not UTF-8); is this a CSV file?") from None
    except Exception as exc:  # pandas raises many kinds; the user needs the file and the reason
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(path, f"cannot read table: {reason}") from exc


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest (CSV or Parquet, or a folder holding ``manifest.csv``); resolve relative paths.

    Refused with an :class:`InputError` naming the file: a missing or empty file, a table without the required
    columns (``image``, ``patient_id``, ``source_dataset``) or without any row. Row-level problems are the job
    of :func:`cxrlab.data.validate.validate_manifest`.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("manifest.parquet", "manifest.csv"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise InputError(path, "folder has no manifest.csv or manifest.parquet")
    df = read_table(path)
    missing = [c for c in schema.REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(path, f"missing required column(s): {', '.join(missing)} (has: "
                               f"{', '.join(map(str, df.columns[:12]))}{' ...' if len(df.columns) > 12 else ''})")
    if df.empty:
        raise InputError(path, "manifest has no rows (only a header)")
    df[schema.PATIENT_ID] = df[schema.PATIENT_ID].astype(str)
    return Manifest(_resolve(df, path.parent), source=path)


def save_manifest(manifest: Manifest | pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write atomically; image/mask paths become relative to the file's folder so the folder can move.

    The table is written to a temporary file renamed over ``path`` only when complete: a failure (a value the
    format cannot hold, a full disk, an interrupt) leaves an earlier file at ``path`` as it was.
    """
    path = Path(path)
    if path.suffix not in TABLE_SUFFIXES:
        raise InputError(path, "unsupported manifest format (use .csv or .parquet)")
    if path.is_dir():
        raise InputError(path, "is a directory, not a manifest file")
    df = manifest.df if isinstance(manifest, Manifest) else manifest
    out = _relativise(df, path.parent)
    try:
        with atomic_path(path) as tmp:
            if path.suffix == ".parquet":
                out.to_parquet(tmp, index=False)
            else:
                out.to_csv(tmp, index=False)
    except (ValueError, TypeError, OSError, ImportError) as exc:  # pyarrow's errors derive from these
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(path, f"cannot write manifest (earlier file, if any, left unchanged): {reason}") from exc
    return path
