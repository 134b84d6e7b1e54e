"""Host tier against a real ComfyUI server (API mode): our loaders feed core nodes end to end."""
import os
import re
import time

import pytest

from bench.fixtures.comfy_server import error_message
from bench.fixtures.graphs import text_to_image
from bench.fixtures.models_folder import REPO
from host.comfy_host import require_comfyui

require_comfyui()


def _assert_image_saved(server, entry, prefix):
    assert entry["status"]["status_str"] == "success", error_message(entry)
    images = entry["outputs"]["save"]["images"]
    assert len(images) == 1 and images[0]["filename"].startswith(prefix)
    assert os.path.getsize(server.output_path(images[0])) > 0


def test_nodes_are_listed(server):
    info = server.get("/object_info")
    for node in ("PixArtT5Loader", "PixArtDiTLoader", "PixArtTextEncode", "PixArtDiffusersLoader"):
        assert node in info, node
    dit_choices = info["PixArtDiTLoader"]["input"]["required"]["dit_name"][1]["options"]
    assert {"sigma-tiny.safetensors", "sigma-tiny.pth", f"diffusers/{REPO}"} <= set(dit_choices)
    t5_choices = info["PixArtT5Loader"]["input"]["required"]["t5_name"][1]["options"]
    assert {"t5-tiny.safetensors", f"diffusers/{REPO}"} <= set(t5_choices)


@pytest.mark.parametrize("dit_name,t5_name", [
    ("sigma-tiny.safetensors", "t5-tiny.safetensors"),
    ("sigma-tiny.pth", "t5-tiny.safetensors"),
    (f"diffusers/{REPO}", "t5-tiny.safetensors"),
    ("sigma-tiny.safetensors", f"diffusers/{REPO}"),
])
def test_core_graph_runs_for_every_layout(server, dit_name, t5_name):
    prefix = re.sub(r"[^a-z0-9]+", "_", f"{dit_name}_{t5_name}".lower())
    entry = server.run(text_to_image(dit_name, t5_name, prefix=prefix))
    _assert_image_saved(server, entry, prefix)


def test_pixart_text_encode_and_repo_loader(server):
    prompt = {
        "repo": {"class_type": "PixArtDiffusersLoader",
                 "inputs": {"repo_name": f"diffusers/{REPO}", "weight_dtype": "default", "t5_device": "cpu"}},
        "pos": {"class_type": "PixArtTextEncode", "inputs": {"clip": ["repo", 1], "text": "a red dog on the moon"}},
        "neg": {"class_type": "PixArtTextEncode", "inputs": {"clip": ["repo", 1], "text": ""}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sample": {"class_type": "KSampler",
                   "inputs": {"model": ["repo", 0], "positive": ["pos", 0], "negative": ["neg", 0],
                              "latent_image": ["latent", 0], "seed": 3, "steps": 2, "cfg": 4.5,
                              "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["repo", 2]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "repo_loader"}},
    }
    entry = server.run(prompt)
    _assert_image_saved(server, entry, "repo_loader")
    texts = entry["outputs"]["pos"]["text"]
    assert texts == ["7/300 tokens"], texts  # six words + EOS


def test_free_unloads_and_next_run_reloads(server):
    def loads():
        return server.log().count("Requested to load PixArtModel")

    graph = lambda seed: text_to_image("sigma-tiny.safetensors", "t5-tiny.safetensors", seed=seed, prefix="free")  # noqa: E731
    _assert_image_saved(server, server.run(graph(100)), "free")
    before = loads()
    assert before >= 1
    _assert_image_saved(server, server.run(graph(101)), "free")
    assert loads() == before, "the model should stay loaded between runs"
    status, _ = server.post("/free", {"unload_models": True, "free_memory": True})
    assert status == 200
    deadline = time.time() + 30
    while time.time() < deadline and "unload" not in server.log().lower()[-2000:]:
        time.sleep(0.5)
    time.sleep(2)
    _assert_image_saved(server, server.run(graph(102)), "free")
    assert loads() == before + 1, "after /free the model is loaded again"


def _saved_pixels(server, entry):
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(server.output_path(entry["outputs"]["save"]["images"][0])), dtype=np.int16)


def test_torch_compile_node_in_an_api_graph(server):
    """PixArt torch.compile between the loader and KSampler: the same picture as without it."""
    plain = server.run(text_to_image("sigma-tiny.safetensors", "t5-tiny.safetensors", seed=5, prefix="uncompiled"))
    prompt = text_to_image("sigma-tiny.safetensors", "t5-tiny.safetensors", seed=5, prefix="compiled")
    prompt["compile"] = {"class_type": "PixArtTorchCompile",
                         "inputs": {"model": ["dit", 0], "backend": "aot_eager", "mode": "default"}}
    prompt["sample"]["inputs"]["model"] = ["compile", 0]
    compiled = server.run(prompt)
    _assert_image_saved(server, compiled, "compiled")
    difference = abs(_saved_pixels(server, compiled) - _saved_pixels(server, plain)).max()
    assert difference <= 1, f"compiled and eager images differ by {difference} levels"
