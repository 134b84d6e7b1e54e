"""python -m batch_client --workflow WORKFLOW_API.json --prompts PROMPTS.(txt|csv|jsonl) --out DEST
       (--server URL [--server URL ...]  |  --ray [ADDRESS] (--comfyui PATH | --server [NODE=]URL ...))

Runs every prompt through the workflow (API format, as saved by ComfyUI's 'Export (API)') and saves each image
with its prompt, negative and seed in the PNG metadata, plus a manifest.jsonl; prints a summary.

Direct mode (--server): the queue is spread over ComfyUI servers someone started.
Ray mode (--ray): the prompts become a Ray Data dataset run by a pool of worker actors (one per GPU where the
cluster has GPUs, --workers otherwise), each owning one ComfyUI on its node: one it starts from --comfyui on
127.0.0.1 and a free port, or one of --server it attaches to. ADDRESS: 'auto', a cluster address, or nothing for
a local Ray. Retries and restarts are Ray's.

Exit status 0 when every prompt produced its images, 1 otherwise, 2 for bad input (found before any work starts).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

from .comfy_process import OWNED_FLAGS, has_option
from .jobs import BadInput, load_workflow, read_prompts, workflow_nodes
from .output import Output
from .report import exit_status, summary

log = logging.getLogger("batch_client")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m batch_client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflow", required=True, help="API-format workflow JSON")
    parser.add_argument("--prompts", required=True, help=".txt (one per line), .csv ('prompt' column) or .jsonl")
    parser.add_argument("--server", action="append", default=[],
                        help="ComfyUI URL, e.g. http://127.0.0.1:8188; repeat. With --ray: servers the workers attach "
                             "to instead of starting ComfyUI, as URL or NODE=URL (a node's own servers)")
    parser.add_argument("--out", default="batch_output",
                        help="folder or URI (s3://, gs://, hdfs://, ... as pyarrow reaches) for images and manifest")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first prompt without its own seed (+1 per prompt)")
    parser.add_argument("--retries", type=int, default=2,
                        help="times a prompt is run again after its server or worker died (default 2)")
    parser.add_argument("--prompt-node", help="id of the positive text node (default: found from the sampler)")
    parser.add_argument("--negative-node", help="id of the negative text node")
    parser.add_argument("--seed-node", help="id of the sampler node")
    parser.add_argument("--job-timeout", type=float, default=1800.0,
                        help="seconds a prompt may go without any word from its server (progress, node starts) before "
                             "the server is taken for hung (default 1800); a slow prompt that keeps reporting runs as "
                             "long as it needs")
    parser.add_argument("--quiet", action="store_true", help="only the summary")
    ray = parser.add_argument_group("Ray mode")
    ray.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                     help="run on Ray: 'auto', a cluster address (HOST:PORT or ray://HOST:PORT), or none for a local Ray")
    ray.add_argument("--comfyui", metavar="PATH", help="ComfyUI checkout each worker starts (on every worker node)")
    ray.add_argument("--comfy-arg", action="append", default=[], metavar="ARG",
                     help="extra argument for each started ComfyUI; repeat, with '=': --comfy-arg=--base-directory=/data")
    ray.add_argument("--comfy-python", metavar="PATH", help="Python for the started ComfyUIs (default: the worker's)")
    ray.add_argument("--workers", type=int,
                     help="worker actors (default: one per GPU of the cluster; without GPUs 1, or one per --server)")
    ray.add_argument("--worker-cpus", type=float, default=1.0,
                     help="CPUs each worker reserves; a CPU-only ComfyUI gets as many torch threads (default 1)")
    ray.add_argument("--ray-temp-dir", metavar="DIR", help="session, log and spill folder of a local Ray")
    ray.add_argument("--no-dashboard", action="store_true", help="start a local Ray without its dashboard")
    return parser


def check_mode(args) -> None:
    if args.ray is None:
        if not args.server:
            raise BadInput("--server: give at least one ComfyUI URL, or --ray to run on a Ray cluster.")
        for flag, value in (("--comfyui", args.comfyui), ("--workers", args.workers), ("--comfy-arg", args.comfy_arg)):
            if value:
                raise BadInput(f"{flag} is for --ray; without --ray the client uses the --server URLs.")
        return
    if bool(args.comfyui) == bool(args.server):
        raise BadInput("--ray: give --comfyui PATH (each worker starts a ComfyUI) or --server URL (each worker "
                       "attaches to a running one), not both and not neither.")
    for flag in OWNED_FLAGS:
        if has_option(args.comfy_arg, flag):
            raise BadInput(f"--comfy-arg {flag}: each worker binds its ComfyUI to 127.0.0.1 on a free port itself; "
                           "leave it out.")
    if args.workers is not None and args.workers < 1:
        raise BadInput(f"--workers {args.workers}: needs at least 1.")


def main(argv=None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("batch_client").setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        check_mode(args)
        workflow = load_workflow(args.workflow)
        nodes = workflow_nodes(workflow, args.workflow, args.prompt_node, args.negative_node, args.seed_node)
        jobs = read_prompts(args.prompts, args.seed)
        if args.ray is not None:
            from .ray_cluster import RaySettings, preflight
            from .ray_run import run_on_ray

            settings = RaySettings(address=args.ray or None, comfyui=args.comfyui, comfy_args=args.comfy_arg,
                                   comfy_python=args.comfy_python, servers=args.server, workers=args.workers,
                                   worker_cpus=args.worker_cpus, retries=args.retries, temp_dir=args.ray_temp_dir,
                                   dashboard=not args.no_dashboard, job_timeout=args.job_timeout)
            ray = preflight(settings)
        output = Output(args.out)
        started = time.time()
        if args.ray is None:
            from .runner import Batch

            batch = Batch(workflow, nodes, output, retries=args.retries, job_timeout=args.job_timeout)
            results = asyncio.run(batch.run(jobs, args.server))
        else:
            results = run_on_ray(ray, settings, workflow, nodes, jobs, output)
    except BadInput as err:
        cli.exit(2, f"{cli.prog}: error: {err}\n")
    manifest = output.write_manifest(results)
    log.info("manifest: %s", manifest)
    print(summary(results, time.time() - started))
    return exit_status(results)


if __name__ == "__main__":
    sys.exit(main())
