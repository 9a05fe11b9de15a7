"""``POST /v1/similar``: the similar-case index named in the service config (``similar.index``), searched with an
uploaded film. The answer is what ``cxrlab index search --json`` prints for one query (``query`` is "upload"),
plus the research-use notice; without a configured index the route answers 404.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, File, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from cxrlab.serve.config import ServiceConfig
from cxrlab.serve.security import UploadError, check_upload


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


def register_similar(app: FastAPI, config: ServiceConfig, read_limited: Any, notice: str) -> None:
    limits = config.limits
    state: dict[str, Any] = {}

    def index() -> Any:
        if "index" not in state:
            state["index"] = load_index(config)
        return state["index"]

    @app.post("/v1/similar")
    async def similar(file: UploadFile = File(...), k: int | None = None) -> JSONResponse:
        """The top-k most similar patients of the index for one uploaded film, each with its films in time order."""
        case_index = await run_in_threadpool(index)
        if case_index is None:
            return JSONResponse({"error": {"status": 404, "reason": "no similar-case index configured "
                                           "(similar.index in the service config)"}}, status_code=404)
        if k is not None and not 1 <= k <= 50:
            raise UploadError(422, f"k must be between 1 and 50 (got {k})")
        data = await read_limited(file, limits.max_upload_bytes)
        check_upload(data, max_bytes=limits.max_upload_bytes, max_pixels=limits.max_pixels, min_side=limits.min_side)
        result = await run_in_threadpool(search_upload, case_index, data, k or config.similar.k, limits.max_pixels)
        return JSONResponse({**result, "notice": notice})
