"""Spread batch jobs over one or more ComfyUI servers: one worker per server, progress from each server's
websocket, jobs of a server that drops go back to the queue for the others, images saved with their prompt."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field

from .jobs import Job, fill

log = logging.getLogger("batch_client")


class ServerDown(Exception):
    """The server stopped answering; its job is retried elsewhere."""


@dataclass
class Result:
    job: Job
    server: str | None = None
    files: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


class Batch:
    def __init__(self, workflow: dict, nodes: tuple[str, str | None, str], out_dir: str, retries: int = 2,
                 job_timeout: float = 1800.0):
        self.workflow, self.nodes, self.out_dir = workflow, nodes, out_dir
        self.retries, self.job_timeout = retries, job_timeout
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.results: dict[int, Result] = {}
        self.unfinished = 0

    async def run(self, jobs: list[Job], servers: list[str]) -> dict[int, Result]:
        import aiohttp

        os.makedirs(self.out_dir, exist_ok=True)
        for job in jobs:
            self.queue.put_nowait(job)
        self.unfinished = len(jobs)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)) as session:
            await asyncio.gather(*(self._worker(session, url.rstrip("/")) for url in servers))
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

    async def _worker(self, session, url: str) -> None:
        import aiohttp

        client_id = uuid.uuid4().hex
        ws_url = re.sub(r"^http", "ws", url) + f"/ws?clientId={client_id}"
        try:
            ws = await session.ws_connect(ws_url, heartbeat=20)
        except (aiohttp.ClientError, OSError) as err:
            log.warning("%s: cannot connect (%s); not used", url, err)
            return
        async with ws:
            while (job := await self._next_job()) is not None:
                started = time.time()
                try:
                    result = await self._run_job(session, ws, url, client_id, job)
                except (ServerDown, aiohttp.ClientError, OSError, asyncio.TimeoutError) as err:
                    job.attempts += 1
                    if job.attempts > self.retries:
                        self._finish(Result(job, url, error=f"failed on {job.attempts} servers, last: {err}"))
                    else:
                        log.warning("%s dropped job %d (%s); it goes back to the queue", url, job.index, err)
                        self.queue.put_nowait(job)
                    log.warning("%s: server down, worker stops", url)
                    return
                result.seconds = time.time() - started
                self._finish(result)
                state = "done" if result.error is None else f"FAILED: {result.error}"
                log.info("%s: job %d %s in %.1f s -> %s", url, job.index, state, result.seconds, ", ".join(result.files))

    async def _run_job(self, session, ws, url: str, client_id: str, job: Job) -> Result:
        import aiohttp

        prefix = f"batch_{job.index:04d}"
        graph = fill(self.workflow, job, *self.nodes, prefix=prefix)
        async with session.post(f"{url}/prompt", json={"prompt": graph, "client_id": client_id}) as response:
            body = await response.json(content_type=None)
            if response.status >= 500:
                raise ServerDown(f"HTTP {response.status}")
            if response.status != 200:
                return Result(job, url, error=f"workflow refused: {json.dumps(body)[:500]}")
        prompt_id = body["prompt_id"]
        deadline = time.time() + self.job_timeout
        while True:
            msg = await asyncio.wait_for(ws.receive(), timeout=max(1.0, deadline - time.time()))
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                raise ServerDown("websocket closed")
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            payload = data.get("data", {})
            if payload.get("prompt_id") != prompt_id:
                continue
            if data["type"] == "progress":
                log.info("%s: job %d step %s/%s", url, job.index, payload.get("value"), payload.get("max"))
            elif data["type"] == "execution_error":
                return Result(job, url, error=f"{payload.get('node_type')}: {payload.get('exception_message')}")
            elif data["type"] == "execution_interrupted":
                return Result(job, url, error="interrupted on the server")
            elif data["type"] == "execution_success":
                break
        return Result(job, url, files=await self._save_outputs(session, url, prompt_id, job))

    async def _save_outputs(self, session, url: str, prompt_id: str, job: Job) -> list[str]:
        history = None
        for _ in range(150):  # the server reports success just before it files the history entry
            async with session.get(f"{url}/history/{prompt_id}") as response:
                history = (await response.json()).get(prompt_id)
            if history is not None:
                break
            await asyncio.sleep(0.2)
        if history is None:
            raise ServerDown(f"no history for prompt {prompt_id}")
        files = []
        for node_output in history.get("outputs", {}).values():
            for image in node_output.get("images", []):
                if image.get("type") != "output":
                    continue
                params = {"filename": image["filename"], "subfolder": image.get("subfolder", ""), "type": "output"}
                async with session.get(f"{url}/view", params=params) as response:
                    if response.status != 200:
                        raise ServerDown(f"/view answered {response.status}")
                    data = await response.read()
                files.append(self._write(job, len(files), data))
        return files

    def _write(self, job: Job, number: int, data: bytes) -> str:
        from PIL import Image, PngImagePlugin

        slug = re.sub(r"[^a-z0-9]+", "-", (job.name or job.prompt).lower()).strip("-")[:40] or "image"
        path = os.path.join(self.out_dir, f"{job.index:04d}-{slug}-{job.seed}-{number}.png")
        image = Image.open(io.BytesIO(data))
        info = PngImagePlugin.PngInfo()
        for key, value in image.info.items():  # keep ComfyUI's own workflow metadata
            if isinstance(value, str):
                info.add_text(key, value)
        info.add_text("pixart_prompt", job.prompt)
        info.add_text("pixart_negative", job.negative or "")
        info.add_text("pixart_seed", str(job.seed))
        image.save(path, pnginfo=info)
        return path


def summary(results: dict[int, Result], elapsed: float) -> str:
    done = [r for r in results.values() if r.error is None]
    failed = [r for r in results.values() if r.error is not None]
    per_server: dict[str, int] = {}
    for result in done:
        per_server[result.server] = per_server.get(result.server, 0) + 1
    lines = [f"{len(done)} of {len(results)} prompts done, {len(failed)} failed, {elapsed:.1f} s"]
    lines += [f"  {server}: {count} prompts" for server, count in sorted(per_server.items())]
    for result in sorted(failed, key=lambda r: r.job.index):
        lines.append(f"  FAILED job {result.job.index} ({result.job.prompt[:60]!r}): {result.error}")
    return "\n".join(lines)
