"""Ray mode, the driver's side: once connected (ray_cluster.py), turn the prompts into a Ray Data
dataset, map it over a pool of ComfyWorker actors (one per GPU where the cluster has GPUs), and save each prompt's
images as its row arrives, exactly once.

Faults are Ray's to handle: a worker whose ComfyUI dies exits, Ray restarts it (max_restarts) and re-runs its
prompt (max_task_retries, at most `retries` times); a prompt whose retries run out is dropped from the dataset
(max_errored_blocks) and reported failed; workers that cannot start stop the run after a few replacements
(max_consecutive_actor_init_deaths), and every prompt without a result is reported failed with Ray's reason.
"""
from __future__ import annotations

import logging
import warnings

from .jobs import Job
from .output import Output
from .ray_cluster import RaySettings, check_comfyui_on_nodes, connect
from .report import Result, log_result

log = logging.getLogger("batch_client")


def _reason(err: BaseException) -> str:
    """One line for an error that stopped the Ray run: the worker's own message where there is one."""
    text = str(err)
    for marker in ("ComfyStartError: ", "BadInput: "):
        if marker in text:
            return text.split(marker, 1)[1].strip().splitlines()[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"


def run_on_ray(ray, settings: RaySettings, workflow: dict, nodes: tuple[str, str | None, str], jobs: list[Job],
               output: Output) -> dict[int, Result]:
    """Connect (a bad address or a cluster without ComfyUI is still BadInput: no prompt has run) and run."""
    connect(ray, settings)
    try:
        return _run(ray, settings, workflow, nodes, jobs, output)
    finally:
        ray.shutdown()


def _run(ray, settings, workflow, nodes, jobs, output) -> dict[int, Result]:
    from ray.data import ActorPoolStrategy, DataContext

    from .ray_worker import ComfyWorker

    gpu = ray.cluster_resources().get("GPU", 0) >= 1
    if settings.address is not None and settings.comfyui:
        check_comfyui_on_nodes(ray, settings, gpu)
    workers = settings.workers or (len(settings.servers) if settings.servers else
                                   int(ray.cluster_resources().get("GPU", 0)) if gpu else 1)
    context = DataContext.get_current()
    context.max_errored_blocks = -1  # a prompt whose retries ran out is reported failed; the others go on
    context.max_consecutive_actor_init_deaths = workers  # then a ComfyUI that cannot start stops the run
    dataset = ray.data.from_items([job.row() for job in jobs], override_num_blocks=len(jobs))
    with warnings.catch_warnings():
        # Ray 2.60 has no named parameter for an actor's restarts and task retries yet, only **ray_remote_args.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        dataset = dataset.map_batches(
            ComfyWorker, batch_size=1,
            compute=ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),  # a dying worker holds one prompt
            fn_constructor_kwargs={"workflow": workflow, "nodes": nodes, "comfyui": settings.comfyui,
                                   "comfy_args": settings.comfy_args, "comfy_python": settings.comfy_python,
                                   "servers": settings.servers, "threads": max(1, int(settings.worker_cpus)),
                                   "job_timeout": settings.job_timeout},
            num_cpus=settings.worker_cpus, num_gpus=1 if gpu else None,
            max_restarts=-1, max_task_retries=settings.retries)
    log.info("%d prompts over %d Ray worker(s)%s", len(jobs), workers, " (1 GPU each)" if gpu else "")
    by_index = {job.index: job for job in jobs}
    results: dict[int, Result] = {}
    stopped = None
    try:
        for row in dataset.iter_rows():
            index = int(row["index"])
            if index in results:  # Ray delivers each row once; should a retry ever repeat one, keep the first
                log.warning("job %d arrived twice; the second copy is ignored", index)
                continue
            job = by_index[index]
            error = row["error"] or None
            files = [] if error else output.save_images(job, [bytes(image) for image in row["images"]])
            result = Result(job, str(row["worker"]), files, error, float(row["seconds"]), float(row["finished_at"]))
            results[index] = result
            log_result(result)
    except Exception as err:  # the run itself stopped, e.g. no worker could start its ComfyUI
        stopped = _reason(err)
        log.error("the Ray run stopped: %s", stopped)
    for job in jobs:
        if job.index not in results:
            results[job.index] = Result(job, error=f"not run: {stopped}" if stopped else
                                        "no result: its Ray task failed (a worker died on it more than --retries "
                                        f"{settings.retries} times, or raised; Ray's log above has the error)")
    return results
