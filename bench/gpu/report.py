"""The GPU harness's JSON: the run's metadata (date, command, git commit, versions, device) and atomic writes."""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess

import torch

from bench.fixtures.pack import ROOT

from .inputs import BYTES_PER_GB


def git(*command: str) -> str | None:
    try:
        return subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def metadata(argv: list[str], device: torch.device) -> dict:
    import diffusers

    commit = git("rev-parse", "HEAD")
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(["python", "bench/gpu_harness.py", *argv]),
            "git_commit": commit, "git_dirty": None if commit is None else bool(git("status", "--porcelain")),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "host": platform.node()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta.update(device=torch.cuda.get_device_name(device), device_memory_gb=props.total_memory / BYTES_PER_GB,
                    multiprocessors=props.multi_processor_count, cudnn=torch.backends.cudnn.version())
    else:
        meta.update(device=f"cpu {platform.machine()} {platform.processor()}".strip(),
                    threads=torch.get_num_threads())
    return meta


def write_json(path: str, results: dict, order: list[str]) -> None:
    """Write atomically, keys in the given order."""
    ordered = {key: results[key] for key in order if key in results}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as handle:
        json.dump(ordered, handle, indent=2)
    os.replace(path + ".tmp", path)
