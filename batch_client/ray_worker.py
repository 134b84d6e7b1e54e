"""The Ray worker actor: one ComfyUI on its node, one prompt per call (Ray Data map_batches over an actor pool).

The actor starts its ComfyUI (or attaches to one given for its node) when Ray creates it. A prompt that ComfyUI
refuses or fails comes back as an error row: it would fail the same way anywhere. When ComfyUI itself goes away
mid-prompt the actor's process exits; Ray then restarts the actor (a fresh ComfyUI) and re-runs the prompt
(max_restarts / max_task_retries), so retries and restarts are Ray's, not this module's.
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request

from .comfy_api import ComfyConnection, PromptFailed, ServerDown
from .comfy_process import ComfyProcess, ComfyStartError
from .jobs import Job, fill

log = logging.getLogger("batch_client")

COLUMNS = ("index", "worker", "seconds", "finished_at", "error", "images")


def servers_for_node(servers: list[str], node: str) -> list[str]:
    """The URLs of `--server [NODE=]URL` that a worker on `node` (IP address or host name) may attach to."""
    names = {node, socket.gethostname()}
    chosen = []
    for spec in servers:
        where, sep, url = spec.partition("=")
        if not sep or "://" in where:  # a plain URL (its query string may hold '=')
            chosen.append(spec)
        elif where in names:
            chosen.append(url)
    return chosen


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/system_stats", timeout=5):
            return True
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def claim_server(servers: list[str], node: str):
    """The first answering server of this node that no other worker on the node holds; held by a file lock that
    the kernel drops when this process ends. Returns (url, lock file)."""
    candidates = servers_for_node(servers, node)
    for url in candidates:
        key = hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:16]
        lock = open(os.path.join(tempfile.gettempdir(), f"batch_client-server-{key}.lock"), "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        if _answers(url):
            return url.rstrip("/"), lock
        lock.close()
    raise ComfyStartError(f"no free ComfyUI server for a worker on node {node} among --server "
                          f"{' '.join(candidates) or '(none for this node)'}: each worker attaches to one answering "
                          "server of its node; give one URL per worker (NODE=URL for a node's own servers) or "
                          "fewer --workers.")


class ComfyWorker:
    """Ray Data callable class: constructed once per actor, called with batches of job rows."""

    def __init__(self, workflow: dict, nodes: tuple[str, str | None, str], comfyui: str | None = None,
                 comfy_args: list[str] = (), comfy_python: str | None = None, servers: list[str] = (),
                 threads: int | None = None, job_timeout: float = 1800.0):
        import ray

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        logging.getLogger("batch_client").setLevel(logging.INFO)
        self.workflow, self.nodes, self.job_timeout = workflow, nodes, job_timeout
        self.node = ray.util.get_node_ip_address()
        self.process, self.lock = None, None
        if servers:
            url, self.lock = claim_server(list(servers), self.node)
        else:
            gpus = ray.get_gpu_ids()
            self.process = ComfyProcess(comfyui, list(comfy_args), comfy_python, cpu=not gpus,
                                        threads=None if gpus else threads)
            url = self.process.url
        self.name = f"{url} on {self.node}"
        self.loop = asyncio.new_event_loop()
        try:
            self.server = self.loop.run_until_complete(ComfyConnection.open(url))
            known = self.loop.run_until_complete(self.server.node_types())
        except ServerDown as err:
            self._stop()
            raise ComfyStartError(f"ComfyUI {self.name} stopped answering right after it started: {err}") from err
        missing = sorted({node["class_type"] for node in workflow.values()} - known)
        if missing:
            self._stop()
            raise ComfyStartError(f"ComfyUI {self.name} does not know the workflow's nodes {', '.join(missing)}: "
                                  "install the packs that provide them in its custom_nodes.")
        log.info("worker %s (pid %d) ready", self.name, os.getpid())

    def __call__(self, batch: dict) -> dict:
        out = {column: [] for column in COLUMNS}
        for number in range(len(batch["index"])):
            job = Job.from_row({key: values[number] for key, values in batch.items()})
            started = time.time()
            graph = fill(self.workflow, job, *self.nodes, prefix=f"batch_{job.index:04d}")
            images, error = [], None
            try:
                images = self.loop.run_until_complete(self.server.run(graph, self.job_timeout))
            except PromptFailed as err:
                error = str(err)
            except ServerDown as err:
                self._die(job, err)
            finished = time.time()
            for column, value in zip(COLUMNS, (job.index, self.name, finished - started, finished, error, images)):
                out[column].append(value)
        return out

    def _die(self, job: Job, err: Exception) -> None:
        """ComfyUI went away: end this actor's process so that Ray restarts the actor and re-runs the prompt."""
        state = "exited" if self.process is not None and self.process.exited(within=5.0) else "stopped answering"
        log.warning("worker %s: ComfyUI %s during job %d (%s); the worker exits so that Ray restarts it and runs the "
                    "prompt again", self.name, state, job.index, err)
        if self.process is not None:
            self.process.stop(keep_log=True)
        os._exit(1)

    def _stop(self) -> None:
        """A worker that cannot serve: end its ComfyUI, keeping the log that its error names."""
        self.close(keep_log=True)

    def close(self, keep_log: bool = False) -> None:
        """Close the connection and end the ComfyUI this worker started (when Ray ends the actor)."""
        loop, server = getattr(self, "loop", None), getattr(self, "server", None)
        if loop is not None and not loop.is_closed():
            if server is not None:
                loop.run_until_complete(server.close())
            loop.close()
        if getattr(self, "process", None) is not None:
            self.process.stop(keep_log=keep_log)
            self.process = None

    def __del__(self):
        self.close()
