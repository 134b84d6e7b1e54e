"""Host tier, Ray mode of the batch client: tiny models in a ComfyUI base folder whose custom_nodes lacks this pack
(so each worker adds it, as on a cluster node), the tiny text-to-image workflow, a short Ray temp folder, and a
runner for the CLI that reads its output line by line. Shared by tests/host/test_batch_client_ray.py and
bench/ray_batch.py."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

from safetensors.torch import save_file

from host.comfy_host import ROOT, t5_state_dict, tiny_t5, tiny_vae
from tiny_models import original_layout, tiny_transformer


def require_ray():
    """Ray Data, or a skip with the reason (CI may run without the [ray] extra)."""
    import pytest

    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as err:
        pytest.skip(f"Ray-mode host tests skipped: Ray Data is not installed ({err}); "
                    "pip install -r requirements-ray.txt", allow_module_level=True)
    return ray


def tiny_workflow(steps: int = 10, size: int = 128) -> dict:
    """PixArt T5 Loader -> PixArt Text Encode -> PixArt DiT Loader -> PixArt Empty Latent -> PixArt KV Sampler ->
    VAE Loader -> PixArt VAE Decode -> SaveImage, on the files write_tiny_models writes."""
    return {
        "t5": {"class_type": "PixArtT5Loader", "inputs": {"t5_name": "t5-tiny.safetensors", "dtype": "default",
                                                          "device": "default", "caption_length": "sigma_300"}},
        "pos": {"class_type": "PixArtTextEncode", "inputs": {"clip": ["t5", 0], "text": "placeholder"}},
        "dit": {"class_type": "PixArtDiTLoader", "inputs": {"dit_name": "sigma-tiny.safetensors",
                                                            "weight_dtype": "default"}},
        "latent": {"class_type": "PixArtEmptyLatent", "inputs": {"width": size, "height": size, "batch_size": 1,
                                                                 "binning": "off", "model": ["dit", 0]}},
        "sample": {"class_type": "PixArtKVSampler", "inputs": {
            "model": ["dit", 0], "positive": ["pos", 0], "latent_image": ["latent", 0], "seed": 0, "steps": steps,
            "cfg": 4.5, "sampler_name": "dpmpp_2m", "scheduler": "pixart_reference", "denoise": 1.0,
            "kv_compress": "off", "kv_layers": "", "kv_mode": "avg", "kv_steps": 1.0}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "vae-tiny.safetensors"}},
        "decode": {"class_type": "PixArtVAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0],
                                                               "tiling": "auto", "tile_size": 1024}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "x"}},
    }


def write_tiny_models(base: str) -> str:
    """A ComfyUI base folder: models/{diffusion_models,text_encoders,vae} with the tiny Σ DiT, T5 and VAE, and an
    empty custom_nodes. Returns the folder."""
    models = os.path.join(base, "models")
    for folder in ("diffusion_models", "text_encoders", "vae"):
        os.makedirs(os.path.join(models, folder), exist_ok=True)
    os.makedirs(os.path.join(base, "custom_nodes"), exist_ok=True)
    model, null_caption = tiny_transformer("sigma", False, seed=0)
    save_file(original_layout(model, null_caption), os.path.join(models, "diffusion_models", "sigma-tiny.safetensors"))
    save_file(t5_state_dict(tiny_t5()), os.path.join(models, "text_encoders", "t5-tiny.safetensors"))
    vae = tiny_vae()
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, os.path.join(models, "vae", "vae-tiny.safetensors"))
    return base


class RayTemp:
    """A short folder for a local Ray's sessions and logs (Ray's socket paths must stay under ~100 characters), and
    a tmp/ in it for the client's own temporary files (each started ComfyUI's scratch folder and log)."""

    def __init__(self):
        self.path = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        self.tmp = os.path.join(self.path, "tmp")
        os.makedirs(self.tmp)

    def remove(self):
        shutil.rmtree(self.path, ignore_errors=True)


def client_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "batch_client", *args]


def client_env(tmpdir: str | None = None, **extra: str) -> dict:
    """The CLI's environment: Ray without its usage report, logs not deduplicated (every worker's line shows),
    temporary files (inherited by a local Ray's workers) under `tmpdir`, plus `extra`."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1", **extra}
    if tmpdir:
        env["TMPDIR"] = tmpdir
    return env


def run_client(args: list[str], on_line=None, timeout: float = 900.0, tmpdir: str | None = None,
               **extra_env: str) -> tuple[int, list[str]]:
    """Run `python -m batch_client ARGS` from the repository root; on_line(line) sees each output line as it comes."""
    process = subprocess.Popen(client_command(*args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=client_env(tmpdir, **extra_env))
    lines = []
    try:
        for line in process.stdout:
            lines.append(line.rstrip())
            if on_line is not None:
                on_line(line.rstrip())
        status = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return status, lines


class RayHead:
    """A one-node Ray cluster started as a user would (`ray start --head --block`), token authentication on, its
    sessions under a RayTemp; stop() ends it (the blocking `ray start` stops its processes on SIGTERM)."""

    def __init__(self, ray_temp: RayTemp, port: int, timeout: float = 120.0):
        import time

        self.log_path = os.path.join(ray_temp.path, "head.log")
        ray = os.path.join(os.path.dirname(sys.executable), "ray")
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [ray, "start", "--head", "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
                 "--temp-dir", ray_temp.path, "--block"], stdout=log, stderr=subprocess.STDOUT,
                env=client_env(ray_temp.tmp, RAY_AUTH_MODE="token"))
        deadline = time.time() + timeout
        while time.time() < deadline and self.process.poll() is None:
            with open(self.log_path) as fh:
                found = re.search(r"ray start --address='?([0-9.]+:[0-9]+)", fh.read())
            if found:
                self.address = found.group(1)
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ray start --head did not come up:\n{open(self.log_path).read()[-3000:]}")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
