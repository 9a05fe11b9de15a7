"""The FastAPI application: ``/v1/analyze``, ``/v1/analyze/batch``, ``/v1/results``, ``/v1/health``,
``/v1/models``, ``/v1/similar`` (:mod:`cxrlab.serve.similar`) and the viewer at ``/``.

Bad input is answered with a JSON error ``{"error": {"status", "reason"}}`` (413, 415, 422), never a 500.
Inference runs in one worker (the model already uses every core); requests that arrive meanwhile are analysed
together in the next batch (:mod:`cxrlab.serve.batcher`); at most ``max_queue`` requests wait, beyond that the
service answers 503 instead of piling up memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, File, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser

from cxrlab.errors import CxrlabError, InputError, find_cxrlab_error
from cxrlab.serve.batcher import MicroBatcher
from cxrlab.serve.config import ServiceConfig
from cxrlab.serve.pipeline import AnalysisPipeline
from cxrlab.serve.security import UploadError, check_upload, token_matches
from cxrlab.serve.store import ResultStore

log = logging.getLogger("cxrlab.serve")
API_VERSION = "v1"
NOTICE = "Research use only, not for diagnosis."


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "reason": reason}}, status_code=status)


def _cxrlab_response(exc: CxrlabError) -> JSONResponse:
    """A deliberate error as a 4xx JSON answer carrying its sentence."""
    if isinstance(exc, UploadError):
        return _error(exc.status, exc.reason)
    if isinstance(exc, InputError):
        # InputError names the source; uploads are named "upload", so no client file name is echoed or logged.
        return _error(422, exc.reason)
    return _error(422, str(exc))


async def _read_limited(upload: UploadFile, limit: int) -> bytes:
    """Read at most ``limit`` bytes (+1 to detect overflow) without trusting the client's declared size."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise UploadError(413, f"upload exceeds the limit of {limit} bytes")
    return data


def _known_query_parameters(request: Request) -> None:
    """A misspelt option (``?heatmaps=false``) is an error naming it, not silently ignored (API routes only)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None or not request.url.path.startswith(f"/{API_VERSION}/"):
        return
    known = {p.alias for p in dependant.query_params}
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise StarletteHTTPException(422, f"unknown query parameter(s) {', '.join(unknown)}; this route takes "
                                          f"{', '.join(sorted(known)) or 'none'}")


def create_app(config: ServiceConfig, pipeline: AnalysisPipeline | None = None,
               store: ResultStore | None = None, *, max_queue: int = 32) -> FastAPI:
    """Build the app; the pipeline (models) is loaded here unless given (tests share one)."""
    pipeline = pipeline or AnalysisPipeline.from_config(config)
    store = store or ResultStore(config.store_dir, ttl_s=config.result_ttl_s)
    token = config.token()
    limits = config.limits
    # Keep whole uploads in memory: starlette spools parts above 1 MB to a temporary file, which would put an
    # identified DICOM on disk before de-identification. Memory stays bounded by the upload and batch limits.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, limits.max_upload_bytes + 1)
    batcher = MicroBatcher(pipeline.analyze_many, max_images=limits.max_batch, max_queue=max_queue)
    started = time.time()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(pipeline.warmup)

        async def sweeper() -> None:
            while True:
                await asyncio.sleep(min(60.0, config.result_ttl_s))
                await run_in_threadpool(store.sweep)

        tasks = [asyncio.create_task(sweeper()), asyncio.create_task(batcher.run())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            store.close()

    app = FastAPI(title="cxrlab", version=API_VERSION, lifespan=lifespan, docs_url="/docs", redoc_url=None,
                  dependencies=[Depends(_known_query_parameters)])
    app.state.pipeline, app.state.store, app.state.config = pipeline, store, config

    @app.middleware("http")
    async def bearer_token(request: Request, call_next: Any) -> Any:
        # Every API route but health needs the token when one is configured; the static viewer itself is public
        # (it holds no data) and sends the token the user types with each API call.
        path = request.url.path
        if token and path.startswith("/v1/") and path != "/v1/health":
            if not token_matches(request.headers.get("authorization"), token):
                return JSONResponse({"error": {"status": 401, "reason": "missing or wrong bearer token"}},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        declared = request.headers.get("content-length")
        batch_factor = limits.max_batch if path.endswith("/batch") else 1
        if declared and declared.isdigit() and int(declared) > limits.max_upload_bytes * batch_factor + 65536:
            return _error(413, f"request of {declared} bytes exceeds the upload limit")
        return await call_next(request)

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return _error(exc.status, exc.reason)

    @app.exception_handler(CxrlabError)
    async def _cxrlab_error(request: Request, exc: CxrlabError) -> JSONResponse:
        return _cxrlab_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        original = find_cxrlab_error(exc)  # e.g. an InputError raised in a worker and wrapped on the way back
        if original is not None:
            return _cxrlab_response(original)
        log.error("internal error on %s: %s", request.url.path, type(exc).__name__)
        return _error(500, "internal error")

    async def _analyze(datas: list[bytes], heatmap: bool | None) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        analyses = await batcher.submit(datas, config.heatmap if heatmap is None else heatmap)
        reports = []
        for analysis in analyses:
            if isinstance(analysis, CxrlabError):
                status = analysis.status if isinstance(analysis, UploadError) else 422
                reason = analysis.reason if isinstance(analysis, (UploadError, InputError)) else str(analysis)
                reports.append({"error": {"status": status, "reason": reason}})
                continue
            rid = store.new_id()
            report = analysis.report | {"id": rid, "notice": NOTICE}
            report["links"] = {name: f"/v1/results/{rid}/{name}.png" for name in analysis.images}
            report["links"]["self"] = f"/v1/results/{rid}"
            await run_in_threadpool(store.put, rid, report, analysis.images)
            reports.append(report)
        log.info("analyzed %d image(s) in %.0f ms: %s", len(datas), 1000 * (time.perf_counter() - t0),
                 ",".join(r.get("id", "error") for r in reports))
        return reports

    def _checked(data: bytes) -> bytes:
        check_upload(data, max_bytes=limits.max_upload_bytes, max_pixels=limits.max_pixels,
                     min_side=limits.min_side)
        return data

    @app.post(f"/{API_VERSION}/analyze")
    async def analyze(file: UploadFile = File(...), heatmap: bool | None = None) -> JSONResponse:
        """One radiograph (PNG, JPEG or DICOM; type by content). ``?heatmap=false`` skips Grad-CAM."""
        data = _checked(await _read_limited(file, limits.max_upload_bytes))
        report = (await _analyze([data], heatmap))[0]
        if "error" in report:
            return _error(report["error"]["status"], report["error"]["reason"])
        return JSONResponse(report)

    @app.post(f"/{API_VERSION}/analyze/batch")
    async def analyze_batch(files: list[UploadFile] = File(...), heatmap: bool | None = None) -> JSONResponse:
        """Several radiographs in one batched pass; a bad file gets its own error entry, the rest still run."""
        if len(files) > limits.max_batch:
            raise UploadError(413, f"{len(files)} files exceed the batch limit of {limits.max_batch}")
        checked: list[bytes | UploadError] = []
        for f in files:
            try:
                checked.append(_checked(await _read_limited(f, limits.max_upload_bytes)))
            except UploadError as exc:
                checked.append(exc)
        good = [d for d in checked if isinstance(d, bytes)]
        done = iter(await _analyze(good, heatmap)) if good else iter(())
        results = [{"error": {"status": c.status, "reason": c.reason}} if isinstance(c, UploadError) else next(done)
                   for c in checked]
        return JSONResponse({"results": results, "n_ok": sum("error" not in r for r in results)})

    @app.get(f"/{API_VERSION}/results/{{result_id}}")
    async def result_json(result_id: str) -> FileResponse:
        path = store.path(result_id, "result.json")
        if path is None:
            raise StarletteHTTPException(404, "unknown or expired result id")
        return FileResponse(path, media_type="application/json")

    @app.get(f"/{API_VERSION}/results/{{result_id}}/{{name}}")
    async def result_file(result_id: str, name: str) -> FileResponse:
        path = store.path(result_id, name)
        if path is None or not name.endswith(".png"):
            raise StarletteHTTPException(404, "unknown or expired result")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, no-store"})

    @app.get(f"/{API_VERSION}/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "stages": pipeline.stage_names, "backend": pipeline.backend,
                "auth_required": bool(token), "uptime_s": round(time.time() - started, 1),
                "result_ttl_s": config.result_ttl_s, "queued": batcher.queue.qsize(),
                "similar": config.similar.index is not None,  # the viewer shows its similar-cases panel
                "mean_batch": round(sum(batcher.batch_sizes) / len(batcher.batch_sizes), 2)
                if batcher.batch_sizes else None, "notice": NOTICE}

    @app.get(f"/{API_VERSION}/models")
    async def models() -> dict[str, Any]:
        return {"models": pipeline.model_cards(), "backend": pipeline.backend}

    from cxrlab.serve.similar import register_similar

    register_similar(app, config, _read_limited, NOTICE)  # POST /v1/similar (404 without similar.index)

    static = files("cxrlab.serve") / "static"

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(static / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app
