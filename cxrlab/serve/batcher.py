"""Micro-batching of concurrent requests: one worker runs the pipeline, on everything queued at that moment.

The model already uses every core, so requests never run side by side; instead, requests that arrive while
one batch is running are analysed together in the next one (batched inference costs far less per image than
one-by-one). The queue is bounded: beyond ``max_queue`` waiting requests the service answers 503.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from fastapi.concurrency import run_in_threadpool

from cxrlab.errors import find_cxrlab_error
from cxrlab.serve.security import UploadError

log = logging.getLogger("cxrlab.serve")


@dataclass
class _Job:
    datas: list[bytes]
    heatmap: bool
    future: asyncio.Future


class MicroBatcher:
    def __init__(self, analyze_many: Callable[..., list[Any]], *, max_images: int, max_queue: int):
        self.analyze_many = analyze_many
        self.max_images = max_images
        self.max_queue = max_queue
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.batch_sizes: list[int] = []  # images per pipeline call (exposed by /v1/health)

    async def submit(self, datas: Sequence[bytes], heatmap: bool) -> list[Any]:
        if self.queue.qsize() >= self.max_queue:
            raise UploadError(503, "service busy: too many queued requests, retry later")
        job = _Job(list(datas), heatmap, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.future

    async def run(self) -> None:
        """The worker loop (a task started at application start-up, cancelled at shutdown)."""
        while True:
            jobs = [await self.queue.get()]
            n = len(jobs[0].datas)
            while not self.queue.empty() and n < self.max_images:
                job = self.queue.get_nowait()
                jobs.append(job)
                n += len(job.datas)
            for heatmap in (True, False):
                group = [j for j in jobs if j.heatmap is heatmap]
                if group:
                    try:
                        await self._run_group(group, heatmap)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - the loop must outlive any one batch
                        log.error("batch failed: %s", type(exc).__name__)
                        self._fail(group, exc)

    async def _run_group(self, group: list[_Job], heatmap: bool) -> None:
        datas = [d for job in group for d in job.datas]
        self.batch_sizes.append(len(datas))
        try:
            results = await run_in_threadpool(self.analyze_many, datas, heatmap=heatmap)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request, which answers with it
            self._fail(group, exc)
            return
        start = 0
        for job in group:
            if not job.future.done():  # a client that went away has cancelled its future
                job.future.set_result(results[start:start + len(job.datas)])
            start += len(job.datas)

    @staticmethod
    def _fail(group: list[_Job], exc: Exception) -> None:
        """Answer every waiting request of ``group`` with ``exc`` (the CxrlabError behind it, when there is one)."""
        exc = find_cxrlab_error(exc) or exc
        for job in group:
            if not job.future.done():
                job.future.set_exception(exc)
