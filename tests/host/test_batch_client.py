"""Host tier: the API-mode batch client against two real ComfyUI servers, one of them stopped mid-run."""
import json
import os
import subprocess
import sys
import time

from PIL import Image

from bench.fixtures.comfy_server import ComfyServer
from bench.fixtures.pack import ROOT
from host.comfy_host import require_comfyui

COMFYUI = require_comfyui()

WORKFLOW = {
    "t5": {"class_type": "PixArtT5Loader", "inputs": {"t5_name": "t5-tiny.safetensors", "dtype": "default",
                                                       "device": "default", "caption_length": "sigma_300"}},
    "pos": {"class_type": "PixArtTextEncode", "inputs": {"clip": ["t5", 0], "text": "placeholder"}},
    "dit": {"class_type": "PixArtDiTLoader", "inputs": {"dit_name": "sigma-tiny.safetensors", "weight_dtype": "default"}},
    "latent": {"class_type": "PixArtEmptyLatent", "inputs": {"width": 128, "height": 128, "batch_size": 1,
                                                             "binning": "off", "model": ["dit", 0]}},
    "sample": {"class_type": "PixArtKVSampler", "inputs": {
        "model": ["dit", 0], "positive": ["pos", 0], "latent_image": ["latent", 0], "seed": 0, "steps": 30, "cfg": 4.5,
        "sampler_name": "dpmpp_2m", "scheduler": "pixart_reference", "denoise": 1.0, "kv_compress": "off",
        "kv_layers": "", "kv_mode": "avg", "kv_steps": 1.0}},
    "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "vae-tiny.safetensors"}},
    "decode": {"class_type": "PixArtVAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0],
                                                           "tiling": "auto", "tile_size": 1024}},
    "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "x"}},
}
PROMPTS = ["a red dog", "a blue cat", "an astronaut riding a horse", "a city at night", "an oil painting of the moon",
           "a small horse in space"]


def test_batch_over_two_servers_survives_one_stopping(server, tmp_path):
    second = ComfyServer(COMFYUI, server.base)
    try:
        (tmp_path / "workflow.json").write_text(json.dumps(WORKFLOW))
        (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
        out = tmp_path / "images"
        client = subprocess.Popen(
            [sys.executable, "-m", "batch_client", "--workflow", str(tmp_path / "workflow.json"), "--prompts",
             str(tmp_path / "prompts.txt"), "--server", server.url, "--server", second.url, "--out", str(out),
             "--seed", "100"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines, stopped = [], False
        for line in client.stdout:
            lines.append(line.rstrip())
            if not stopped and line.startswith(f"{second.url}: job") and " done in " in line:
                second.stop()  # mid-run: the second server has finished one prompt and taken the next
                stopped = True
        assert client.wait(timeout=600) == 0, "\n".join(lines)
    finally:
        second.stop()
    output = "\n".join(lines)
    print("\n" + "\n".join(lines[-4:]))
    assert stopped, output
    assert "6 of 6 prompts done, 0 failed" in output
    assert f"{second.url}: server down" in output or "goes back to the queue" in output, output
    served = {url: int(line.split(": ")[1].split()[0]) for line in lines for url in (server.url, second.url)
              if line.strip().startswith(url + ":") and line.strip().endswith("prompts")}
    assert served.get(second.url, 0) >= 1 and served.get(server.url, 0) >= 1, served
    files = sorted(name for name in os.listdir(out) if name.endswith(".png"))
    assert len(files) == 6, files
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(entry["index"], entry["prompt"], entry["error"]) for entry in manifest] == [
        (index, prompt, None) for index, prompt in enumerate(PROMPTS)]
    assert all(entry["file"] in files and entry["worker"] in (server.url, second.url) for entry in manifest), manifest
    for index, prompt in enumerate(PROMPTS):
        (name,) = [f for f in files if f.startswith(f"{index:04d}-")]
        image = Image.open(out / name)
        assert image.text["pixart_prompt"] == prompt and image.text["pixart_seed"] == str(100 + index)
        assert "prompt" in image.text  # ComfyUI's own workflow metadata is kept
    time.sleep(0.1)
