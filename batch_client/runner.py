"""Direct mode: spread batch jobs over ComfyUI servers someone started, one worker per server, without a cluster.
A job whose server drops goes back to the queue for the others (at most `retries` times)."""
from __future__ import annotations

import asyncio
import logging
import time

from .comfy_api import ComfyConnection, PromptFailed, ServerDown
from .jobs import Job, fill
from .output import Output
from .report import Result, log_result

log = logging.getLogger("batch_client")


class Batch:
    def __init__(self, workflow: dict, nodes: tuple[str, str | None, str], output: Output, retries: int = 2,
                 job_timeout: float = 1800.0):
        self.workflow, self.nodes, self.output = workflow, nodes, output
        self.retries, self.job_timeout = retries, job_timeout
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.results: dict[int, Result] = {}
        self.unfinished = 0

    async def run(self, jobs: list[Job], servers: list[str]) -> dict[int, Result]:
        for job in jobs:
            self.queue.put_nowait(job)
        self.unfinished = len(jobs)
        await asyncio.gather(*(self._worker(url.rstrip("/")) for url in servers))
        while not self.queue.empty():  # every server went down with jobs left
            job = self.queue.get_nowait()
            self.results[job.index] = Result(job, error="no server left to run it")
        return self.results

    def _finish(self, result: Result) -> None:
        self.results[result.job.index] = result
        self.unfinished -= 1

    async def _next_job(self) -> Job | None:
        while self.unfinished > 0:
            try:
                return self.queue.get_nowait()
            except asyncio.QueueEmpty:
                await asyncio.sleep(0.2)  # a job may come back from a server that drops
        return None

    async def _worker(self, url: str) -> None:
        try:
            server = await ComfyConnection.open(url)
        except ServerDown as err:
            log.warning("%s: %s; not used", url, err)
            return
        try:
            while (job := await self._next_job()) is not None:
                started = time.time()
                graph = fill(self.workflow, job, *self.nodes, prefix=f"batch_{job.index:04d}")
                try:
                    images = await server.run(graph, self.job_timeout, on_progress=lambda value, total, job=job: log.info(
                        "%s: job %d step %s/%s", url, job.index, value, total))
                    finished = time.time()
                    files = await asyncio.to_thread(self.output.save_images, job, images)  # the other servers go on
                    result = Result(job, url, files, seconds=finished - started, finished_at=finished)
                except PromptFailed as err:
                    finished = time.time()
                    result = Result(job, url, error=str(err), seconds=finished - started, finished_at=finished)
                except ServerDown as err:
                    job.attempts += 1
                    if job.attempts > self.retries:
                        self._finish(Result(job, url, error=f"failed on {job.attempts} servers, last: {err}"))
                    else:
                        log.warning("%s dropped job %d (%s); it goes back to the queue", url, job.index, err)
                        self.queue.put_nowait(job)
                    log.warning("%s: server down, worker stops", url)
                    return
                self._finish(result)
                log_result(result)
        finally:
            await server.close()

