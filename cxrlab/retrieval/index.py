"""A FAISS index of L2-normalised embeddings with the films' metadata beside it, and patient-level search.

>>> build_index("emb.parquet", "cases.index")                     # exact inner product (= cosine) by default
>>> add_to_index("cases.index", "more.parquet")                   # incremental
>>> index = CaseIndex.load("cases.index")
>>> index.search(["query.png"], k=5)      # [{"query", "results": [{"patient_id", "image", "similarity",
...                                       #                        "finding", "series": [...]}, ...]}, ...]
>>> index.search_vectors(vectors, k=5, patient_ids=["P1"])        # the same for vectors already made

The index is a folder: ``index.json`` (what it holds: kind, dimension, count, the embedding source, the current
file names), ``vectors-<gen>.faiss`` and ``meta-<gen>.parquet`` (one row per vector, in id order). A build or an
add writes a new generation of both files and then swaps ``index.json`` atomically, so a reader always sees a
consistent pair and a crash leaves the previous index intact.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cxrlab.data import schema
from cxrlab.errors import ConfigError, InputError
from cxrlab.retrieval.embeddings import IMAGE_PATH, Embeddings, clean_meta, read_embeddings
from cxrlab.utils import atomic_path, atomic_write_text

INDEX_FILE = "index.json"
KINDS = ("flat", "ivf", "hnsw")
FORMAT_VERSION = 1


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - a dependency of cxrlab
        raise ConfigError("the similar-case index needs faiss-cpu (pip install faiss-cpu)") from exc
    return faiss


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero), float32 C-contiguous: inner product = cosine."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def make_faiss_index(vectors: np.ndarray, kind: str = "flat", *, nlist: int | None = None, m: int = 32,
                     ef_construction: int = 80, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A FAISS inner-product index over (already normalised) ``vectors`` and its search parameters.

    ``flat``: exact. ``ivf``: inverted lists (``nlist`` default sqrt(N), at least 39 training points per list;
    k-means on 64 points per list), searched with ``nprobe`` = max(8, nlist / 16) lists. ``hnsw``: graph with
    ``m`` links per node, searched with ``efSearch``.
    """
    faiss = _faiss()
    n, dim = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        params: dict[str, Any] = {}
    elif kind == "ivf":
        if n < 39:
            raise InputError("index", f"an IVF index needs at least 39 vectors to train (got {n}); use --kind flat")
        nlist = int(nlist or max(1, min(round(math.sqrt(n)), n // 39)))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        train = vectors
        if n > 64 * nlist:  # k-means on a sample (64 points per list) is as good and far faster
            train = vectors[np.sort(np.random.default_rng(seed).choice(n, 64 * nlist, replace=False))]
        index.cp.seed = seed
        index.cp.niter = 10
        index.train(train)
        params = {"nlist": nlist, "nprobe": max(1, min(nlist, max(8, nlist // 16)))}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        params = {"m": m, "efConstruction": ef_construction, "efSearch": 64}
    else:
        raise ConfigError(f"index kind {kind!r}: expected one of {', '.join(KINDS)}")
    index.add(vectors)
    return index, params


def _apply_params(index: Any, kind: str, params: dict[str, Any]) -> None:
    if kind == "ivf":
        index.nprobe = int(params["nprobe"])
    elif kind == "hnsw":
        index.hnsw.efSearch = int(params["efSearch"])


def _series_order(meta: pd.DataFrame) -> np.ndarray:
    offsets = meta[schema.OFFSET_DAYS].to_numpy(float) if schema.OFFSET_DAYS in meta else np.full(len(meta), np.nan)
    key = pd.DataFrame({"pid": meta[schema.PATIENT_ID].to_numpy(), "missing": np.isnan(offsets),
                        "off": np.nan_to_num(offsets, nan=0.0), "image": meta[schema.IMAGE].to_numpy()})
    return key.sort_values(["pid", "missing", "off", "image"], kind="stable").index.to_numpy()


def _offset(value: Any) -> float | int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    value = float(value)
    return int(value) if value.is_integer() else value


class CaseIndex:
    """A loaded index folder: ``search`` (images), ``search_vectors`` (vectors), ``series(patient_id)``."""

    def __init__(self, path: Path, index: Any, meta: pd.DataFrame, info: dict[str, Any]):
        self.path, self.index, self.meta, self.info = path, index, meta.reset_index(drop=True), info
        self.dim = int(info["dim"])
        self._embedder: Any = None
        pids = self.meta[schema.PATIENT_ID].fillna("").astype(str).to_numpy()
        self._pids = pids
        order = _series_order(self.meta.assign(**{schema.PATIENT_ID: pids}))
        self._series: dict[str, list[dict[str, Any]]] = {}
        for i in order:
            self._series.setdefault(pids[i], []).append(
                {"image": self.meta.at[i, schema.IMAGE], "offset_days": _offset(self.meta.at[i, schema.OFFSET_DAYS])
                 if schema.OFFSET_DAYS in self.meta else None})
        self._by_path = {p: i for i, p in enumerate(self.meta[IMAGE_PATH].astype(str))}

    def __len__(self) -> int:
        return len(self.meta)

    # --- loading ----------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> "CaseIndex":
        faiss = _faiss()
        path = Path(path)
        info = read_index_info(path)
        vec_file, meta_file = path / info["vectors_file"], path / info["meta_file"]
        for f in (vec_file, meta_file):
            if not f.is_file():
                raise InputError(path, f"index is incomplete: {f.name} is missing (rebuild it with "
                                       "`cxrlab index build`)")
        try:
            index = faiss.read_index(str(vec_file))
        except RuntimeError as exc:
            raise InputError(vec_file, f"cannot read the FAISS index (truncated or corrupt?): "
                                       f"{str(exc).strip().splitlines()[-1][:120]}") from None
        try:
            meta = pd.read_parquet(meta_file)
        except Exception as exc:  # noqa: BLE001
            raise InputError(meta_file, f"cannot read the index metadata table: {type(exc).__name__}") from None
        if index.ntotal != len(meta) or index.ntotal != int(info["count"]) or index.d != int(info["dim"]):
            raise InputError(path, f"index is inconsistent: {index.ntotal} vectors of dimension {index.d}, "
                                   f"{len(meta)} metadata rows, index.json says {info['count']} x {info['dim']}")
        _apply_params(index, info["kind"], info.get("params", {}))
        return cls(path, index, meta, info)

    # --- queries ----------------------------------------------------------------------------------------------
    def series(self, patient_id: str) -> list[dict[str, Any]]:
        """The patient's films in the index, ordered by ``offset_days`` (films without an offset last)."""
        return [dict(s) for s in self._series.get(str(patient_id), [])]

    def patient_of(self, image: str | os.PathLike) -> str | None:
        """The patient of an indexed image (by absolute path), else None."""
        row = self._by_path.get(str(Path(image).resolve()))
        return None if row is None else str(self._pids[row])

    def _check_dim(self, vectors: np.ndarray, what: str) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None]
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise InputError(what, f"vectors of dimension {vectors.shape[-1] if vectors.ndim else 0} for an index of "
                                   f"dimension {self.dim} ({self.path})", field="embedding")
        return vectors

    def search_vectors(self, vectors: np.ndarray, k: int = 5, patient_ids: Sequence[str | None] | None = None,
                       queries: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Top ``k`` patients per query vector: each patient's best image, its cosine similarity and finding,
        and the patient's series ordered by offset. ``patient_ids[i]`` (when not None) is left out of query
        ``i``'s results (the query's own patient). ``queries`` names the queries in the output."""
        if k < 1:
            raise ConfigError(f"k must be >= 1 (got {k})")
        x = normalize(self._check_dim(vectors, "query"))
        n_q = len(x)
        patient_ids = list(patient_ids) if patient_ids is not None else [None] * n_q
        queries = list(queries) if queries is not None else [f"query {i}" for i in range(n_q)]
        if len(patient_ids) != n_q or len(queries) != n_q:
            raise InputError("query", f"{n_q} vectors, {len(patient_ids)} patient ids, {len(queries)} names")
        out: list[dict[str, Any]] = [{"query": q, "results": []} for q in queries]
        n = len(self)
        if n == 0 or n_q == 0:
            return out
        fetch = min(n, max(8 * k, 32))
        pending = list(range(n_q))
        while pending:
            sims, ids = self.index.search(x[pending], fetch)
            still = []
            for row, qi in enumerate(pending):
                results = self._patients(sims[row], ids[row], k, patient_ids[qi])
                if len(results) < k and fetch < n:
                    still.append(qi)
                out[qi]["results"] = results
            if not still:
                break
            pending, fetch = still, min(n, fetch * 4)
        return out

    def _patients(self, sims: np.ndarray, ids: np.ndarray, k: int, own: str | None) -> list[dict[str, Any]]:
        seen: set[str] = set()
        results = []
        for sim, i in zip(sims, ids):
            if i < 0:  # faiss pads with -1 when it found fewer
                continue
            pid = str(self._pids[i])
            if pid in seen or (own is not None and pid == str(own)):
                continue
            seen.add(pid)
            finding = self.meta.at[i, schema.FINDING] if schema.FINDING in self.meta else None
            results.append({"patient_id": pid, "image": self.meta.at[i, schema.IMAGE],
                            "similarity": round(float(sim), 6), "finding": finding, "series": self.series(pid)})
            if len(results) == k:
                break
        return results

    def embedder(self) -> Any:
        """The embedder that made the index's vectors (the same run or backbone, same preprocessing)."""
        if self._embedder is None:
            from cxrlab.retrieval.embeddings import Embedder

            src = self.info.get("source", {})
            if src.get("kind") == "run":
                self._embedder = Embedder.create(src["run"], checkpoint=src.get("checkpoint", "best"),
                                                 lung_model=src.get("lung_model"))
            elif src.get("kind") == "backbone":
                self._embedder = Embedder.create(src["backbone"], weights=src.get("weights", "imagenet"),
                                                 size=int(src.get("size", 224)))
            else:
                raise InputError(self.path, f"its vectors were not made by a run or backbone ({src.get('kind')}); "
                                            "search it with vectors (search_vectors), not images")
        return self._embedder

    def search(self, images: str | os.PathLike | Sequence[str | os.PathLike], k: int = 5,
               batch_size: int = 16) -> list[dict[str, Any]]:
        """Embed the query images (files, folders or manifests) as the index was made and search them.

        The query's own patient is excluded: from the manifest's ``patient_id`` when a manifest is given, else
        from the index when the image itself is indexed. ``query`` is the path as given (absolute for files
        found in a folder, as written for manifest rows)."""
        from cxrlab.retrieval.embeddings import resolve_with_spelling

        df = resolve_with_spelling(images)
        # images named directly keep the spelling they were given (on the command line)
        given = {str(Path(p).resolve()): str(p) for p in ([images] if isinstance(images, (str, os.PathLike))
                                                           else images) if Path(p).is_file()
                 and Path(p).suffix.lower() not in (".csv", ".parquet", ".txt")}
        names = [given.get(p, str(n)) for p, n in zip(df[IMAGE_PATH], df[schema.IMAGE])]
        own: list[str | None] = []
        for i, path in enumerate(df[IMAGE_PATH]):
            pid = df.at[i, schema.PATIENT_ID] if schema.PATIENT_ID in df.columns else None
            own.append(str(pid) if pid is not None and not (isinstance(pid, float) and math.isnan(pid))
                       else self.patient_of(path))
        embedder = self.embedder()
        if embedder.dim != self.dim:
            raise InputError(self.path, f"its embedder makes {embedder.dim}-d vectors, the index holds {self.dim}-d")
        vectors = []
        for start in range(0, len(df), batch_size):
            rows = df.iloc[start:start + batch_size]
            vectors.append(embedder([embedder.load(r) for _, r in rows.iterrows()]))
        return self.search_vectors(np.concatenate(vectors), k, own, names)


# --- building ---------------------------------------------------------------------------------------------------


def read_index_info(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "index does not exist (make one with `cxrlab index build EMB --out INDEX`)")
    if not path.is_dir() or not (path / INDEX_FILE).is_file():
        raise InputError(path, f"not a cxrlab index folder (no {INDEX_FILE}; make one with `cxrlab index build`)")
    try:
        info = json.loads((path / INDEX_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path / INDEX_FILE, f"unreadable index description: {exc}") from None
    missing = [k for k in ("kind", "dim", "count", "vectors_file", "meta_file") if k not in info]
    if missing:
        raise InputError(path / INDEX_FILE, f"not a cxrlab index description (no {', '.join(missing)})")
    return info


def _write_generation(out: Path, index: Any, meta: pd.DataFrame, info: dict[str, Any]) -> Path:
    faiss = _faiss()
    out.mkdir(parents=True, exist_ok=True)
    old = json.loads((out / INDEX_FILE).read_text()) if (out / INDEX_FILE).is_file() else {}
    gen = int(old.get("generation", 0)) + 1
    vec_name, meta_name = f"vectors-{gen}.faiss", f"meta-{gen}.parquet"
    with atomic_path(out / vec_name) as tmp:
        faiss.write_index(index, str(tmp))
    with atomic_path(out / meta_name) as tmp:
        meta.to_parquet(tmp, index=False)
    info = {**info, "generation": gen, "vectors_file": vec_name, "meta_file": meta_name, "count": int(index.ntotal),
            "faiss": faiss.__version__, "version": FORMAT_VERSION}
    atomic_write_text(out / INDEX_FILE, json.dumps(info, indent=1))
    for name in (old.get("vectors_file"), old.get("meta_file")):  # the previous generation, now unreferenced
        if name and name not in (vec_name, meta_name) and (out / name).exists():
            (out / name).unlink()
    return out


def _as_embeddings(emb: str | os.PathLike | Embeddings) -> tuple[Embeddings, str]:
    if isinstance(emb, Embeddings):
        return emb, "embeddings"
    return read_embeddings(emb), str(emb)


def _check_patients(meta: pd.DataFrame, what: str) -> None:
    missing = meta[schema.PATIENT_ID].isna() if schema.PATIENT_ID in meta else pd.Series(True, index=meta.index)
    if missing.any():
        row = int(np.flatnonzero(missing.to_numpy())[0])
        raise InputError(what, f"image {meta.at[row, schema.IMAGE]} has no patient_id: similar-case search "
                               "groups films by patient (embed a manifest with patient_id)", field=schema.PATIENT_ID)


def build_index(emb: str | os.PathLike | Embeddings, out: str | os.PathLike, kind: str = "flat",
                **options: Any) -> Path:
    """Build an index folder from an EMB file (or :class:`Embeddings`); replaces an index already at ``out``."""
    if kind not in KINDS:
        raise ConfigError(f"index kind {kind!r}: expected one of {', '.join(KINDS)}")
    emb, what = _as_embeddings(emb)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder (an index is a folder)")
    if len(emb) == 0:
        raise InputError(what, "holds no embeddings")
    meta = clean_meta(emb.meta)
    _check_patients(meta, what)
    meta = meta.drop_duplicates(IMAGE_PATH, keep="first")
    vectors = normalize(emb.vectors[meta.index.to_numpy()])
    t0 = time.perf_counter()
    index, params = make_faiss_index(vectors, kind, **options)
    info = {"kind": kind, "params": params, "dim": int(vectors.shape[1]), "metric": "cosine (inner product of "
            "L2-normalised vectors)", "source": emb.info.get("source", {"kind": "custom"}),
            "build_seconds": round(time.perf_counter() - t0, 3)}
    return _write_generation(out, index, meta.reset_index(drop=True), info)


def add_to_index(index_dir: str | os.PathLike, emb: str | os.PathLike | Embeddings) -> tuple[Path, int]:
    """Add the EMB file's images that the index does not hold yet; returns ``(index folder, number added)``.

    The vectors must have the index's dimension and come from the same embedding source."""
    faiss = _faiss()
    index_dir = Path(index_dir)
    current = CaseIndex.load(index_dir)
    emb, what = _as_embeddings(emb)
    if emb.dim != current.dim:
        raise InputError(what, f"vectors of dimension {emb.dim} cannot go into an index of dimension {current.dim} "
                               f"({index_dir})", field="embedding")
    src, have = emb.info.get("source", {}), current.info.get("source", {})
    keys = ("kind", "run", "checkpoint", "backbone", "weights", "size")
    if any(src.get(k) != have.get(k) for k in keys):
        raise InputError(what, f"vectors made by {src}, the index holds vectors made by {have}: they are not "
                               "comparable", field="embedding")
    meta = clean_meta(emb.meta)
    _check_patients(meta, what)
    new = ~meta[IMAGE_PATH].isin(set(current.meta[IMAGE_PATH])) & ~meta[IMAGE_PATH].duplicated()
    if not new.any():
        return index_dir, 0
    rows = np.flatnonzero(new.to_numpy())
    index = faiss.clone_index(current.index)
    index.add(normalize(emb.vectors[rows]))
    merged = clean_meta(pd.concat([current.meta, meta.iloc[rows]], ignore_index=True))
    info = {k: v for k, v in current.info.items() if k not in ("count",)}
    _write_generation(index_dir, index, merged, info)
    return index_dir, int(len(rows))
