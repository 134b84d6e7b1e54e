"""Ray mode, reaching the cluster: the settings, the checks that need no cluster (Ray installed, the address
answering, --comfyui a ComfyUI checkout), ray.init with this pack shipped to the workers, and the --comfyui check on
each node of a cluster. Every failure here is BadInput: no prompt has run yet."""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field

from .comfy_process import PACK_ROOT, comfyui_problem, is_pack
from .jobs import BadInput

log = logging.getLogger("batch_client")

# Left out of the copy of the pack that Ray ships to every node (runtime_env working_dir).
SHIPPING_EXCLUDES = [".git", "tests", "bench", "tools", "__pycache__", "*.pyc"]


@dataclass
class RaySettings:
    address: str | None = None  # None: a new local Ray; 'auto'; 'host:port'; 'ray://host:port'
    comfyui: str | None = None  # each worker starts this ComfyUI ...
    comfy_args: list[str] = field(default_factory=list)
    comfy_python: str | None = None
    servers: list[str] = field(default_factory=list)  # ... or attaches to one of these ([NODE=]URL)
    workers: int | None = None
    worker_cpus: float = 1.0
    retries: int = 2
    temp_dir: str | None = None  # local Ray's session, log and spill folder
    dashboard: bool = True
    job_timeout: float = 1800.0


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        raise BadInput(f"--ray needs Ray Data ({err}); install it with: pip install -r requirements-ray.txt") from err
    return ray


def _check_reachable(address: str) -> None:
    """Fail fast, in one line, on a cluster address nothing answers at (Ray itself would retry for a minute)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise BadInput(f"--ray {address}: not a cluster address; use 'auto', HOST:PORT (the head's GCS port, 6379 "
                       "by default) or ray://HOST:PORT, or no address for a local Ray.")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except OSError as err:
        raise BadInput(f"--ray {address}: no Ray cluster answers there ({err.strerror or err}); start one with "
                       "'ray start --head' on the head node, or fix the address.") from err


def preflight(settings: RaySettings):
    """The checks that need no cluster, before any work: Ray installed, the address answering, --comfyui a ComfyUI
    checkout (for a local Ray; on a cluster each node's copy is checked once connected). Returns the ray module."""
    if settings.address is not None:
        _check_reachable(settings.address)
    elif settings.comfyui and (problem := comfyui_problem(settings.comfyui)):
        raise BadInput(f"--comfyui {settings.comfyui}: {problem}; point it at the folder that holds ComfyUI's main.py.")
    return import_ray()


def connect(ray, settings: RaySettings):
    """ray.init with this pack shipped to every worker (its code, and the node pack for ComfyUIs that lack it)."""
    if is_pack(PACK_ROOT):
        runtime_env = {"working_dir": PACK_ROOT, "excludes": SHIPPING_EXCLUDES}
    else:
        runtime_env = {"py_modules": [os.path.dirname(os.path.abspath(__file__))]}
    if settings.address is None:
        kwargs = {"address": "local", "include_dashboard": settings.dashboard}
        if settings.temp_dir:
            kwargs["_temp_dir"] = os.path.abspath(settings.temp_dir)
    else:
        kwargs = {"address": settings.address}
    try:
        context = ray.init(runtime_env=runtime_env, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        token = ("; a cluster started by 'ray start --head' uses token authentication: set RAY_AUTH_MODE=token here "
                 "and give this machine the head's token (~/.ray/auth_token or RAY_AUTH_TOKEN)"
                 if settings.address is not None and os.environ.get("RAY_AUTH_MODE", "").lower() != "token" else "")
        raise BadInput(f"--ray {settings.address or '(local)'}: cannot connect ({first}); start a cluster with "
                       f"'ray start --head', or run without an address for a local Ray{token}.") from err
    dashboard = getattr(context, "dashboard_url", None)
    log.info("Ray %s: %s%s", ray.__version__, "local" if settings.address is None else settings.address,
             f", dashboard http://{dashboard}" if dashboard else "")
    return context


def _worker_nodes(ray, gpu: bool, cpus: float) -> list[dict]:
    return [node for node in ray.nodes() if node.get("Alive") and (
        node["Resources"].get("GPU", 0) >= 1 if gpu else node["Resources"].get("CPU", 0) >= cpus)]


def check_comfyui_on_nodes(ray, settings: RaySettings, gpu: bool) -> None:
    """On a cluster, --comfyui names a folder on the worker nodes: check it on each node that can host a worker."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def problem_on_node(path):
        return ray.util.get_node_ip_address(), comfyui_problem(path)

    nodes = _worker_nodes(ray, gpu, settings.worker_cpus)
    if not nodes:
        raise BadInput(f"--ray {settings.address}: no node of the cluster can host a worker "
                       f"({'1 GPU' if gpu else f'{settings.worker_cpus:g} CPU'} each); add nodes or lower --worker-cpus.")
    checks = [problem_on_node.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
              .remote(settings.comfyui) for node in nodes]
    for node_ip, problem in ray.get(checks, timeout=120):
        if problem:
            raise BadInput(f"--comfyui {settings.comfyui}: {problem} on node {node_ip}; every worker node needs "
                           "ComfyUI at that path.")
