"""``POST /v1/similar``: the similar-case index named in the service config (``similar.index``), searched with an
uploaded film. The answer is what ``cxrlab index search --json`` prints for one query (``query`` is "upload"),
plus the research-use notice; without a configured index the route answers 404. Each result also carries
``row`` (the index row of the best-matching film), ``thumbnail`` (``GET /v1/similar/thumbnails/<row>``: a
downscaled PNG of that indexed film, addressed by row number only, never by a path) and ``outcomes`` (the outcome
columns recorded for the patient in the index, when there are any).
"""

from __future__ import annotations

from typing import Any

import math

from fastapi import FastAPI, File, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from cxrlab.serve.config import ServiceConfig
from cxrlab.serve.security import UploadError, check_upload

THUMBNAIL_SIDE = 160  # longest side of a thumbnail, pixels
# the index's outcome columns that describe the patient (the per-film opacity grades are left out)
PATIENT_OUTCOMES = ["went_icu", "intubated", "death_event", "survival_days", "survival"]


def load_index(config: ServiceConfig) -> Any:
    """The configured :class:`cxrlab.retrieval.CaseIndex` (its embedder loaded too), or None."""
    if config.similar.index is None:
        return None
    from cxrlab.retrieval import CaseIndex

    index = CaseIndex.load(config.similar.index)
    index.embedder()  # load the run / backbone now, not on the first request
    return index


def search_upload(index: Any, data: bytes, k: int, max_pixels: int) -> dict[str, Any]:
    from cxrlab.data import schema
    from cxrlab.io import read_image_bytes

    image, _ = read_image_bytes(data, name="upload", max_pixels=max_pixels)
    vector = index.embedder()([{schema.KEY_IMAGE: image}])
    return index.search_vectors(vector, k=k, queries=["upload"])[0]


def _recorded(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    """A JSON-friendly scalar (numpy numbers become Python numbers, whole floats integers)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class _Rows:
    """Index rows by (patient, image as written) and each patient's recorded outcomes, built once per index."""

    def __init__(self, index: Any):
        from cxrlab.data import schema
        meta = index.meta
        pids = meta[schema.PATIENT_ID].fillna("").astype(str).tolist()
        images = meta[schema.IMAGE].astype(str).tolist()
        self.row = {(p, im): i for i, (p, im) in enumerate(zip(pids, images))}
        self.outcomes: dict[str, dict[str, Any]] = {}
        cols = [c for c in PATIENT_OUTCOMES if c in meta.columns]
        for i, pid in enumerate(pids):
            found = self.outcomes.setdefault(pid, {})
            for col in cols:  # first recorded value per column (outcomes are per patient)
                value = meta.at[i, col]
                if col not in found and _recorded(value):
                    found[col] = _plain(value)


def annotate(result: dict[str, Any], rows: _Rows) -> dict[str, Any]:
    """Add ``row``, ``thumbnail`` and ``outcomes`` to each patient of a search result."""
    out = []
    for hit in result["results"]:
        row = rows.row.get((str(hit["patient_id"]), str(hit["image"])))
        out.append({**hit, "row": row, "thumbnail": None if row is None else f"/v1/similar/thumbnails/{row}",
                    "outcomes": rows.outcomes.get(str(hit["patient_id"]), {})})
    return {**result, "results": out}


def thumbnail_png(index: Any, row: int, max_pixels: int, side: int = THUMBNAIL_SIDE) -> bytes | None:
    """A downscaled PNG of the indexed film in row ``row`` (None: no such row or the film is unreadable). The
    file read is the one the index recorded for that row: a client never names a path."""
    import cv2
    import numpy as np

    from cxrlab.errors import InputError
    from cxrlab.io import read_image
    from cxrlab.retrieval.embeddings import IMAGE_PATH

    if not 0 <= row < len(index):
        return None
    try:
        image, _ = read_image(index.meta.at[row, IMAGE_PATH], max_pixels=max_pixels)
    except InputError:
        return None
    h, w = image.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".png", np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8))[1].tobytes()


def register_similar(app: FastAPI, config: ServiceConfig, read_limited: Any, notice: str) -> None:
    limits = config.limits
    state: dict[str, Any] = {}

    def index() -> Any:
        if "index" not in state:
            state["index"] = load_index(config)
            state["rows"] = None if state["index"] is None else _Rows(state["index"])
        return state["index"]

    def _no_index() -> JSONResponse:
        return JSONResponse({"error": {"status": 404, "reason": "no similar-case index configured "
                                       "(similar.index in the service config)"}}, status_code=404)

    @app.post("/v1/similar")
    async def similar(file: UploadFile = File(...), k: int | None = None) -> JSONResponse:
        """The top-k most similar patients of the index for one uploaded film, each with its films in time order."""
        case_index = await run_in_threadpool(index)
        if case_index is None:
            return _no_index()
        if k is not None and not 1 <= k <= 50:
            raise UploadError(422, f"k must be between 1 and 50 (got {k})")
        data = await read_limited(file, limits.max_upload_bytes)
        check_upload(data, max_bytes=limits.max_upload_bytes, max_pixels=limits.max_pixels, min_side=limits.min_side)
        result = await run_in_threadpool(search_upload, case_index, data, k or config.similar.k, limits.max_pixels)
        return JSONResponse({**annotate(result, state["rows"]), "notice": notice})

    @app.get("/v1/similar/thumbnails/{row}")
    async def similar_thumbnail(row: int) -> Response:
        """A downscaled PNG of one indexed film, by its index row number (``thumbnail`` in ``/v1/similar``)."""
        case_index = await run_in_threadpool(index)
        if case_index is None:
            return _no_index()
        png = await run_in_threadpool(thumbnail_png, case_index, row, limits.max_pixels)
        if png is None:
            return JSONResponse({"error": {"status": 404, "reason": "no such indexed film"}}, status_code=404)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})
