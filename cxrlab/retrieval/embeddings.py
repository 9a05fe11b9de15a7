"""Per-image embedding vectors and the EMB file that holds them.

>>> embed("runs/diag", "data/phantom", "emb.parquet")            # a trained run: its heads' input vector
>>> embed("efficientnet_lite0", ["a.png", "scans/"], "emb.parquet")  # a registry backbone, ImageNet weights
>>> emb = read_embeddings("emb.parquet"); emb.vectors.shape, emb.meta.columns

An EMB file is one Parquet table: one row per image with the manifest's metadata (``image`` as written in the
manifest, ``image_path`` absolute, ``patient_id``, ``study_id``, ``offset_days``, ``finding``, outcomes...) and
an ``embedding`` column (fixed-size float32 list), plus a schema metadata entry ``cxrlab_embeddings`` saying
what made the vectors (``source``: run directory or backbone, preprocessing) and their dimension. It is
rewritten atomically every few hundred images, so an interrupted ``embed`` resumes where it stopped: rows whose
``image_path`` is already in the file are skipped.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.errors import ConfigError, InputError
from cxrlab.utils import atomic_path

EMBEDDING = "embedding"
IMAGE_PATH = "image_path"  # absolute path (what is read); ``image`` keeps the manifest's spelling
META_KEY = b"cxrlab_embeddings"
FORMAT_VERSION = 1
# string-valued metadata columns kept beside each vector (when the input has them)
TEXT_COLUMNS = [schema.IMAGE, IMAGE_PATH, schema.PATIENT_ID, schema.STUDY_ID, schema.FINDING, "finding_coarse",
                schema.VIEW, schema.SOURCE_DATASET]
# outcome columns kept as recorded (numbers stay numbers, anything else becomes text)
OUTCOME_COLUMNS = [schema.WENT_ICU, schema.SURVIVAL_DAYS, schema.DEATH_EVENT, "survival", "intubated",
                   schema.OPACITY_RIGHT, schema.OPACITY_LEFT]
META_COLUMNS = [*TEXT_COLUMNS, schema.OFFSET_DAYS, *OUTCOME_COLUMNS, schema.SEEN_IN_PRETRAINING]


@dataclass
class Embeddings:
    """Vectors ``(N, D)`` float32, their metadata table (N rows) and what made them (``info``)."""

    vectors: np.ndarray
    meta: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.meta)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA or value is pd.NaT


def clean_meta(df: pd.DataFrame) -> pd.DataFrame:
    """The metadata columns EMB files and indexes keep, with one type each (Parquet needs one per column)."""
    out = pd.DataFrame(index=range(len(df)))
    df = df.reset_index(drop=True)
    for col in META_COLUMNS:
        if col not in df.columns:
            continue
        values = df[col]
        numeric = col in (schema.OFFSET_DAYS, schema.SEEN_IN_PRETRAINING)
        if numeric or (col in OUTCOME_COLUMNS and pd.api.types.is_numeric_dtype(values)):
            out[col] = pd.to_numeric(values, errors="coerce").astype("float64")
        else:
            out[col] = pd.Series([None if _missing(v) or str(v) == "" else str(v) for v in values], dtype=object)
    return out


def write_embeddings(path: str | os.PathLike, vectors: np.ndarray, meta: pd.DataFrame,
                     info: dict[str, Any] | None = None) -> Path:
    """Write an EMB file atomically (also for hand-made vectors: ``info`` then names their ``source``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(meta):
        raise InputError(path, f"{len(meta)} metadata rows for vectors of shape {vectors.shape}", field=EMBEDDING)
    if not np.isfinite(vectors).all():
        raise InputError(path, "embedding vectors contain NaN or infinity", field=EMBEDDING)
    meta = clean_meta(meta)
    for col in (schema.IMAGE, IMAGE_PATH):
        if col not in meta.columns:
            raise InputError(path, f"metadata lacks the {col!r} column", field=col)
    info = {"version": FORMAT_VERSION, **(info or {"source": {"kind": "custom"}}), "dim": int(vectors.shape[1])}
    table = pa.Table.from_pandas(meta, preserve_index=False)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    table = table.append_column(EMBEDDING, pa.FixedSizeListArray.from_arrays(flat, int(vectors.shape[1])))
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(info).encode()})
    try:
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
    except OSError as exc:
        raise InputError(path, f"cannot write embeddings: {exc.strerror or exc}") from exc
    return path


def read_embeddings(path: str | os.PathLike) -> Embeddings:
    """An EMB file (``cxrlab embed``'s output); anything else is an ``InputError`` naming the file."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise InputError(path, "embeddings file does not exist (make one with `cxrlab embed`)")
    if path.is_dir():
        raise InputError(path, "is a directory, not an embeddings file (`cxrlab embed ... --out EMB`)")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - arrow raises many kinds for a non-Parquet file
        raise InputError(path, f"not an embeddings file (cannot read it as Parquet: {type(exc).__name__})") from None
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None or EMBEDDING not in table.column_names:
        raise InputError(path, "not an embeddings file made by `cxrlab embed` (no embedding column/metadata)")
    info = json.loads(raw)
    dim = int(info["dim"])
    column = table.column(EMBEDDING).combine_chunks()
    vectors = column.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim) \
        if len(column) else np.zeros((0, dim), np.float32)
    meta = table.drop_columns([EMBEDDING]).to_pandas()
    return Embeddings(np.array(vectors, dtype=np.float32, order="C"), meta, info)  # a writable copy


# --- what makes the vectors ------------------------------------------------------------------------------------


def _square(image: np.ndarray, size: int) -> np.ndarray:
    import cv2

    interp = cv2.INTER_AREA if min(image.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(np.asarray(image, np.float32), (size, size), interpolation=interp)


class Embedder:
    """``embedder(samples) -> (N, D)`` float32: a trained run's pooled features (the vector every head's linear
    layer reads; per-lung ROI runs average their sides) or a registry backbone's pooled features.

    ``Embedder.create(source)``: ``source`` a run directory or a backbone name (``list_backbones()``).
    """

    def __init__(self, source: dict[str, Any], features: Callable[[Any], Any], prepare: Callable[[dict], Any],
                 per_image: int, dim: int, precision: str, needs_masks: bool = False):
        self.source, self._features, self._prepare = source, features, prepare
        self.per_image, self.dim, self.precision = per_image, dim, precision
        self.needs_masks = needs_masks

    @classmethod
    def create(cls, source: str | os.PathLike, *, precision: str = "auto", weights: str = "imagenet",
               size: int = 224, checkpoint: str = "best", lung_model: str | os.PathLike | None = None) -> "Embedder":
        from cxrlab.anatomy.predict import resolve_precision
        from cxrlab.models import get_backbone_entry
        from cxrlab.models.backbones import list_backbones

        if precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision {precision!r}: expected auto, fp32 or bf16")
        precision = resolve_precision(precision)
        path = Path(source)
        if path.is_dir() and (path / "backbone.pt").is_file():  # a cxrlab pretrain run: its backbone, its contract
            from cxrlab.models.weights import read_run_backbone

            contract = read_run_backbone(path)["contract"]
            source, weights, size = contract["backbone"], f"run:{path}", int(contract["size"])
            path = Path(source)
        if path.is_dir():
            from cxrlab.train import load_run

            run = load_run(path, checkpoint)
            run.model.eval()
            lung = str(Path(lung_model).resolve()) if lung_model else None

            def prepare(sample: dict) -> Any:
                return run.inputs_for(sample, lung)

            info = {"kind": "run", "run": str(path.resolve()), "checkpoint": checkpoint,
                    "backbone": run.recipe.model.backbone, "lung_model": lung}
            return cls(info, run.model.features, prepare, run.pipeline.per_image,
                       int(run.model.backbone.num_features), precision, run.pipeline.needs_masks)
        if str(source) in list_backbones():
            import torch

            entry = get_backbone_entry(str(source))
            net, _ = entry.create(in_chans=1, weights=weights)
            net.eval()
            mean, std = entry.normalization(1, weights)
            mean_t, std_t = float(mean[0]), float(std[0])

            def prepare_backbone(sample: dict) -> Any:
                x = torch.from_numpy(_square(sample[schema.KEY_IMAGE], size))[None, None]
                return (x - mean_t) / std_t

            info = {"kind": "backbone", "backbone": str(source), "weights": weights, "size": size}
            return cls(info, net, prepare_backbone, 1, int(net.num_features), precision)
        if path.exists():
            raise InputError(path, "not a run directory (a trained run's folder is expected) nor a backbone name")
        raise InputError(source, f"neither a run directory nor a backbone name (backbones: "
                                 f"{', '.join(list_backbones())})")

    def load(self, row: pd.Series | dict) -> dict:
        from cxrlab.data.dataset import load_sample

        row = dict(row)
        row[schema.IMAGE] = row.get(IMAGE_PATH, row[schema.IMAGE])
        if not self.needs_masks:  # only the image: mask columns are not even read
            row = {k: v for k, v in row.items() if not k.startswith("mask_")}
        # a run whose ROI needs lungs reads the row's lung masks, or predicts them with the lung model
        return load_sample(row, None, label_columns=[])

    def __call__(self, samples: Sequence[dict]) -> np.ndarray:
        """Vectors of in-memory samples (``{"image": float32 HxW [0, 1], <masks>}``), one row per sample."""
        import torch

        from cxrlab.anatomy.predict import autocast

        if not samples:
            return np.zeros((0, self.dim), np.float32)
        x = torch.cat([self._prepare(s) for s in samples])
        with torch.inference_mode(), autocast(self.precision):
            feats = self._features(x.contiguous(memory_format=torch.channels_last))
        feats = feats.float().numpy().reshape(len(samples), self.per_image, -1).mean(axis=1)
        return np.ascontiguousarray(feats, dtype=np.float32)


def _as_written(item: Path, rows: pd.DataFrame) -> list[str]:
    """The ``image`` values as spelled in the manifest file (``load_manifest`` made them absolute)."""
    from cxrlab.data.manifest import read_table

    source = rows.attrs.get("source")
    if source is None:
        return list(rows[schema.IMAGE].astype(str))
    raw = read_table(source)[schema.IMAGE]
    if len(raw) != len(rows):
        return list(rows[schema.IMAGE].astype(str))
    return [str(v) for v in raw]


def resolve_with_spelling(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> pd.DataFrame:
    """``resolve_inputs`` per item, plus ``image_path`` (absolute) and ``image`` as written in its manifest
    (an image given directly, or found in a folder, is written as its absolute path)."""
    from cxrlab.data.inputs import resolve_inputs

    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items:
        raise InputError("inputs", "no image, folder or manifest given")
    frames = []
    for item in items:
        manifest = resolve_inputs([item])
        df = manifest.df.copy()
        df.attrs["source"] = manifest.source if manifest.attrs.get("kind") == "manifest" else None
        written = _as_written(Path(item), df)
        df[IMAGE_PATH] = df[schema.IMAGE].astype(str)
        df[schema.IMAGE] = written
        df.attrs = {}
        frames.append(df)
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return df.drop_duplicates(IMAGE_PATH, keep="first").reset_index(drop=True)


def _same_source(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("kind", "run", "checkpoint", "backbone", "weights", "size")
    return all(a.get(k) == b.get(k) for k in keys)


def embed(source: str | os.PathLike | Embedder, data: str | os.PathLike | Sequence[str | os.PathLike],
          out: str | os.PathLike, *, batch_size: int = 32, precision: str = "auto", flush_every: int = 512,
          lung_model: str | os.PathLike | None = None,
          progress: Callable[[int, int], None] | None = None) -> Path:
    """Embed every image of ``data`` into the EMB file ``out``; rows already there are skipped (resume).

    ``source``: a run directory, a backbone name or an :class:`Embedder`. ``progress(done, total)`` is called
    after each batch. The file is rewritten atomically every ``flush_every`` new images and at the end.
    Unreadable images are an ``InputError`` naming them (nothing embedded so far is lost).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1 (got {batch_size})")
    out = Path(out)
    df = resolve_with_spelling(data)
    embedder = source if isinstance(source, Embedder) else Embedder.create(source, precision=precision,
                                                                            lung_model=lung_model)
    vectors = np.zeros((0, embedder.dim), np.float32)
    meta = pd.DataFrame()
    if out.exists():
        old = read_embeddings(out)
        if not _same_source(old.info.get("source", {}), embedder.source):
            raise InputError(out, f"holds vectors of {old.info.get('source')}, not of {embedder.source}; "
                                  "use another --out", field=EMBEDDING)
        vectors, meta = old.vectors, old.meta
    done = set(meta[IMAGE_PATH]) if len(meta) else set()
    todo = df[~df[IMAGE_PATH].isin(done)].reset_index(drop=True)
    info = {"source": embedder.source, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if str(embedder.source.get("weights", "")).startswith("run:"):  # mark films whose patient the backbone saw
        from cxrlab.pretrain.guard import seen_in_pretraining

        todo = todo.assign(**{schema.SEEN_IN_PRETRAINING: seen_in_pretraining(embedder.source["weights"], todo)})
    parts_v, parts_m = [vectors], [meta]
    pending = 0
    total = len(todo)
    if progress:
        progress(0, total)
    for start in range(0, total, batch_size):
        chunk = todo.iloc[start:start + batch_size]
        samples = [embedder.load(row) for _, row in chunk.iterrows()]
        parts_v.append(embedder(samples))
        parts_m.append(chunk)
        pending += len(chunk)
        if pending >= flush_every:
            vectors, meta = _flush(out, parts_v, parts_m, info)
            parts_v, parts_m, pending = [vectors], [meta], 0
        if progress:
            progress(min(start + batch_size, total), total)
    if pending or not out.exists():
        _flush(out, parts_v, parts_m, info)
    return out


def _flush(out: Path, parts_v: list[np.ndarray], parts_m: list[pd.DataFrame],
           info: dict[str, Any]) -> tuple[np.ndarray, pd.DataFrame]:
    vectors = np.concatenate(parts_v) if len(parts_v) > 1 else parts_v[0]
    frames = [clean_meta(m) for m in parts_m if len(m)]
    meta = pd.concat(frames, ignore_index=True) if frames else clean_meta(pd.DataFrame(columns=META_COLUMNS))
    meta = clean_meta(meta)
    write_embeddings(out, vectors, meta, info)
    return vectors, meta
