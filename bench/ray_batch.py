"""CPU benchmark of the batch client's Ray mode (issue 15), on one machine with a local Ray. Needs a ComfyUI checkout
and Ray Data (pip install -r requirements-ray.txt):

    COMFYUI_PATH=/path/to/ComfyUI python bench/ray_batch.py [--prompts 16] [--steps 20] [--repeats 2]

1. Scaling: the same prompts through `--ray --comfyui` with 1 and with 2 worker actors, each starting its own
   ComfyUI (--cpu, one torch thread: --worker-cpus 1), runs interleaved (1, 2, 1, 2, ...) in this one invocation.
2. Overhead: the same prompts through the direct mode (--server A --server B) and through the Ray mode attached to
   the same two running servers (--ray --server A --server B), interleaved, after one warm-up run that loads the
   models in both servers.

Each run is the real CLI (python -m batch_client) in a subprocess. Reported per run: wall seconds of the whole
command (Ray start, ComfyUI start and model loading included), seconds to the first finished prompt, and the
steady rate in prompts/minute between the W-th and the last finished prompt (W = workers, so each worker's first
prompt, which loads the models, is left out), from the manifest's finished_at: when each prompt's images were
fetched from its server (the worker's clock; one machine here); and the CPU seconds of the command's whole process
tree (sampled from /proc with psutil), split into ComfyUI servers and the rest (the client, and Ray's driver,
GCS, raylet, agents and worker actors): CPU time is what other load on a shared machine disturbs least.
Models: the tiny random-weight PixArt-Σ DiT, T5 and full-width SDXL-layout VAE of the host tests, 128 px.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
log = logging.getLogger("bench.ray_batch")

WORDS = "a photo of cat dog on the moon red blue big small astronaut riding horse in space with painting oil city night"


def prompts(count: int) -> list[str]:
    words = WORDS.split()
    return [" ".join(words[(i * 7 + k) % len(words)] for k in range(6)) for i in range(count)]


class TreeCpu:
    """CPU seconds of a process and all its descendants, sampled every 0.2 s while it runs (the last sample of each
    process counts), split into ComfyUI servers (main.py) and everything else (the client and, in Ray mode, Ray)."""

    def __init__(self, pid: int):
        import psutil

        self.root, self.seen, self.done = psutil.Process(pid), {}, threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self):
        import psutil

        while not self.done.is_set():
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            for process in processes:
                try:
                    times = process.cpu_times()
                    comfyui = "main.py" in process.cmdline()
                except psutil.Error:
                    continue
                self.seen[process.pid] = (comfyui, times.user + times.system)
            self.done.wait(0.2)

    def stop(self) -> dict:
        self.done.set()
        self.thread.join()
        split = {"comfyui_cpu_s": 0.0, "client_cpu_s": 0.0}
        for comfyui, seconds in self.seen.values():
            split["comfyui_cpu_s" if comfyui else "client_cpu_s"] += seconds
        return split


def timed_run(args: list[str], out: str, tmpdir: str | None, workers: int) -> dict:
    """One CLI run: wall seconds, seconds to the first finished prompt, steady prompts/minute (from the manifest's
    finished_at, stamped where each prompt's images were fetched), CPU seconds of its process tree."""
    from bench.fixtures.batch_runs import client_command, client_env

    started, clock = time.perf_counter(), time.time()
    process = subprocess.Popen(client_command(*args, "--out", out), cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=client_env(tmpdir))
    cpu = TreeCpu(process.pid)
    output = process.stdout.read()
    status = process.wait()
    wall = time.perf_counter() - started
    cpu = cpu.stop()
    if status != 0:
        raise SystemExit(f"run failed ({status}):\n" + "\n".join(output.splitlines()[-30:]))
    with open(os.path.join(out, "manifest.jsonl"), encoding="utf-8") as fh:
        finished = sorted(json.loads(line)["finished_at"] - clock for line in fh)
    steady = (len(finished) - workers) / (finished[-1] - finished[workers - 1]) * 60
    return {"wall_s": wall, "first_s": finished[0], "per_min": steady, "done": len(finished), **cpu}


def describe(label: str, run: dict) -> str:
    return (f"{label}: {run['done']} prompts, wall {run['wall_s']:.1f} s, first after {run['first_s']:.1f} s, "
            f"steady {run['per_min']:.1f} prompts/min; CPU: client {run['client_cpu_s']:.1f} s, "
            f"ComfyUI {run['comfyui_cpu_s']:.1f} s")


def main():
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--part", choices=("both", "scaling", "overhead"), default="both")
    args = parser.parse_args()
    from bench.fixtures.pack import comfyui_or_exit

    comfyui = comfyui_or_exit()
    import ray

    from batch_client.comfy_process import ComfyProcess
    from bench.fixtures.batch_runs import RayTemp
    from bench.fixtures.graphs import tiny_workflow
    from bench.fixtures.models_folder import write_models_folder

    log.info("machine: %s, %d CPUs, Python %s, Ray %s, ComfyUI %s; %d prompts, %d steps, 128 px, tiny Σ models",
             platform.machine(), os.cpu_count(), platform.python_version(), ray.__version__, comfyui, args.prompts,
             args.steps)
    report = {}
    with tempfile.TemporaryDirectory() as work:
        base = os.path.join(work, "base")
        write_models_folder(base)
        with open(os.path.join(work, "workflow.json"), "w") as fh:
            json.dump(tiny_workflow(steps=args.steps), fh)
        with open(os.path.join(work, "prompts.txt"), "w") as fh:
            fh.write("\n".join(prompts(args.prompts)) + "\n")
        common = ["--workflow", os.path.join(work, "workflow.json"), "--prompts", os.path.join(work, "prompts.txt")]

        def ray_args(ray_temp: RayTemp) -> list[str]:
            return [*common, "--ray", "--ray-temp-dir", ray_temp.path, "--no-dashboard"]

        if args.part in ("both", "scaling"):
            runs = {1: [], 2: []}
            for repeat in range(args.repeats):
                for workers in (1, 2):
                    ray_temp = RayTemp()
                    try:
                        run = timed_run([*ray_args(ray_temp), "--comfyui", comfyui,
                                         f"--comfy-arg=--base-directory={base}", "--workers", str(workers),
                                         "--worker-cpus", "1"], os.path.join(work, f"scaling-{workers}-{repeat}"),
                                        ray_temp.tmp, workers)
                    finally:
                        ray_temp.remove()
                    runs[workers].append(run)
                    log.info(describe(f"run {repeat}, Ray, {workers} worker(s) starting ComfyUI", run))
            one, two = (statistics.median(r["per_min"] for r in runs[w]) for w in (1, 2))
            wall_one, wall_two = (statistics.median(r["wall_s"] for r in runs[w]) for w in (1, 2))
            cpu = {w: {key: statistics.median(r[key] for r in runs[w]) for key in ("client_cpu_s", "comfyui_cpu_s")}
                   for w in (1, 2)}
            report["scaling"] = {"1 worker per_min": one, "2 workers per_min": two, "ratio": two / one,
                                 "1 worker wall_s": wall_one, "2 workers wall_s": wall_two,
                                 "wall ratio": wall_one / wall_two, "cpu": cpu}
            log.info("scaling (median of %d): 1 worker %.1f prompts/min, 2 workers %.1f prompts/min, ratio %.2f; "
                     "whole runs %.1f s vs %.1f s (%.2fx)", args.repeats, one, two, two / one, wall_one, wall_two,
                     wall_one / wall_two)
            log.info("CPU seconds (median): 1 worker: client and Ray %.1f, ComfyUI %.1f; 2 workers: %.1f, %.1f",
                     cpu[1]["client_cpu_s"], cpu[1]["comfyui_cpu_s"], cpu[2]["client_cpu_s"], cpu[2]["comfyui_cpu_s"])

        if args.part in ("both", "overhead"):
            servers = [ComfyProcess(comfyui, ["--base-directory", base], threads=1) for _ in range(2)]
            try:
                urls = [arg for server in servers for arg in ("--server", server.url)]
                warm = timed_run([*common, *urls], os.path.join(work, "warm-up"), None, 2)
                log.info(describe("warm-up, direct (loads the models in both servers; not counted)", warm))
                runs = {"direct": [], "ray": []}
                for repeat in range(args.repeats):
                    run = timed_run([*common, *urls], os.path.join(work, f"direct-{repeat}"), None, 2)
                    runs["direct"].append(run)
                    log.info(describe(f"run {repeat}, direct mode, 2 servers", run))
                    ray_temp = RayTemp()
                    try:
                        run = timed_run([*ray_args(ray_temp), *urls], os.path.join(work, f"ray-{repeat}"), ray_temp.tmp, 2)
                    finally:
                        ray_temp.remove()
                    runs["ray"].append(run)
                    log.info(describe(f"run {repeat}, Ray mode attached to the same 2 servers", run))
            finally:
                for server in servers:
                    server.stop()
            keys = ("wall_s", "first_s", "per_min", "client_cpu_s")
            medians = {mode: {key: statistics.median(r[key] for r in runs[mode]) for key in keys} for mode in runs}
            report["overhead"] = medians
            direct, on_ray = medians["direct"], medians["ray"]
            log.info("overhead (median of %d): wall %.1f s direct vs %.1f s Ray (+%.1f s); first prompt after %.1f s vs "
                     "%.1f s; steady %.1f vs %.1f prompts/min (Ray / direct %.2f); client-side CPU %.1f s vs %.1f s",
                     args.repeats, direct["wall_s"], on_ray["wall_s"], on_ray["wall_s"] - direct["wall_s"],
                     direct["first_s"], on_ray["first_s"], direct["per_min"], on_ray["per_min"],
                     on_ray["per_min"] / direct["per_min"], direct["client_cpu_s"], on_ray["client_cpu_s"])
    log.info("result: %s", json.dumps(report))


if __name__ == "__main__":
    main()
