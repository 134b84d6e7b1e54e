"""Host tier: the latent graph (our sampler, bins, decode) against diffusers' PixArtSigmaPipeline, and KV
compression, img2img and latent upscale through a real ComfyUI server in API mode."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from bench.fixtures.comfy_server import cached_nodes, error_message
from bench.fixtures.reference_runs import PROMPT, text_to_image
from bench.fixtures.schedulers import pixart_sigma_scheduler
from host.comfy_host import require_comfyui

require_comfyui()

SDXL_SCALE = 0.13025


def _pipeline(server, transformer):
    from diffusers import PixArtSigmaPipeline

    scheduler = pixart_sigma_scheduler()
    ref = server.reference
    return PixArtSigmaPipeline(tokenizer=ref["tokenizer"], text_encoder=ref["t5"], vae=ref["vae"],
                               transformer=transformer, scheduler=scheduler)


def _graph(dit_name, width, height, binning, seed, **sampler):
    return text_to_image(dit_name, "sigma_300", seed, f"lat{seed}", width=width, height=height, binning=binning, **sampler)


def _outputs(server, entry):
    assert entry["status"]["status_str"] == "success", error_message(entry)
    image = np.asarray(Image.open(server.output_path(entry["outputs"]["save"]["images"][0])))
    return server.saved_latent(entry, "save_latent"), image


@pytest.mark.parametrize("dit_name,size,binning,seed", [
    ("sigma-tiny.safetensors", (128, 96), "off", 7),
    ("sigma256-tiny.pth", (200, 120), "model", 11),
], ids=["1024-model-no-binning", "256-model-binned"])
def test_defaults_reproduce_the_diffusers_pipeline(server, sigma_ckpt, dit_name, size, binning, seed):
    width, height = size
    latent, image = _outputs(server, server.run(_graph(dit_name, width, height, binning, seed)))
    transformer = sigma_ckpt.model if dit_name.startswith("sigma-tiny") else server.reference["sigma256"]
    pipe = _pipeline(server, transformer)
    kwargs = dict(prompt=PROMPT, negative_prompt="", num_inference_steps=20, guidance_scale=4.5, height=height,
                  width=width, use_resolution_binning=binning != "off", clean_caption=False, max_sequence_length=300)
    with torch.no_grad():
        ref_latent = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(seed), output_type="latent").images
        ref_image = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(seed), output_type="pt").images
    ours = latent * SDXL_SCALE  # ComfyUI stores latents divided by the VAE scale
    assert ours.shape == ref_latent.shape
    relative = ((ours - ref_latent).abs().max() / ref_latent.std()).item()
    print(f"\n{dit_name} {size} binning={binning}: latent max error / std = {relative:.2e}")
    assert relative <= 3e-4
    ref_pixels = (ref_image[0].permute(1, 2, 0).numpy() * 255).round()
    assert image.shape == ref_pixels.shape == (height, width, 3)
    pixel_error = np.abs(image.astype(np.float64) - ref_pixels).max()
    print(f"max pixel difference: {pixel_error:.0f}/255")
    assert pixel_error <= 3


def _sample_only(dit_name, seed, extra_nodes=None, **sampler):
    graph = _graph(dit_name, 128, 96, "off", seed, **sampler)
    for key in ("vae", "decode", "save"):
        graph.pop(key)
    graph.update(extra_nodes or {})
    return graph


def test_kv_compression_runs_and_differs(server):
    entry = server.run(_sample_only("sigma-tiny.safetensors", 5))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    off = _latent(server, entry)
    results = {}
    for label, settings in {"2x2 avg all": {"kv_compress": "2x2", "kv_layers": "all"},
                            "3x3 nearest": {"kv_compress": "3x3", "kv_mode": "nearest", "kv_layers": "1"},
                            "4x4 uniform half steps": {"kv_compress": "4x4", "kv_mode": "uniform", "kv_steps": 0.5},
                            "no layers": {"kv_compress": "2x2", "kv_steps": 0.0}}.items():
        entry = server.run(_sample_only("sigma-tiny.safetensors", 5, **settings))
        assert entry["status"]["status_str"] == "success", f"{label}: {error_message(entry)}"
        results[label] = _latent(server, entry)
        assert torch.isfinite(results[label]).all(), label
    # 96x128 px -> latent 12x16 -> tokens 6x8: not divisible by 4 (nor 3 in width)
    for label in ("2x2 avg all", "3x3 nearest", "4x4 uniform half steps"):
        assert (results[label] - off).abs().max() > 1e-4, label
    assert torch.equal(results["no layers"], off)


def _latent(server, entry):
    return server.saved_latent(entry, "save_latent")


def test_kv_patch_node_leaves_the_model_unpatched(server):
    """PixArt KV Compression's MODEL samples compressed; the MODEL it was given does not: a graph with the patch node
    runs first, then the plain sampler on the loader's same (cached) MODEL must equal it on a freshly loaded one."""
    graph = _sample_only("sigma-tiny.safetensors", 5, extra_nodes={
        "patch": {"class_type": "PixArtKVCompress", "inputs": {"model": ["dit", 0], "kv_compress": "2x2",
                                                               "kv_layers": "all", "kv_mode": "avg", "kv_steps": 1.0}},
        "ksampler": {"class_type": "KSampler", "inputs": {
            "model": ["patch", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
            "seed": 5, "steps": 20, "cfg": 4.5, "sampler_name": "dpmpp_2m", "scheduler": "pixart_reference",
            "denoise": 1.0}},
        "save_patched": {"class_type": "SaveLatent", "inputs": {"samples": ["ksampler", 0], "filename_prefix": "patched"}}})
    for key in ("sample", "save_latent"):
        graph.pop(key)
    entry = server.run(graph)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    patched = server.saved_latent(entry, "save_patched")
    # the plain sampler on the loader's MODEL the patch node was given (the loader answered from the cache); kv_layers
    # set while kv_compress is off cannot change the result and makes ComfyUI run the sampler
    after = server.run(_sample_only("sigma-tiny.safetensors", 5, kv_layers="14-27"))
    assert "dit" in cached_nodes(after) and "sample" not in cached_nodes(after), cached_nodes(after)
    # the same on a freshly loaded MODEL ('default' storage is fp32 on this CPU: the same weights)
    fresh_graph = _sample_only("sigma-tiny.safetensors", 5, kv_layers="0-1")
    fresh_graph["dit"]["inputs"]["weight_dtype"] = "default"
    fresh = server.run(fresh_graph)
    assert "dit" not in cached_nodes(fresh) and "sample" not in cached_nodes(fresh), cached_nodes(fresh)
    assert torch.equal(_latent(server, after), _latent(server, fresh))
    compressed = _latent(server, server.run(_sample_only("sigma-tiny.safetensors", 5, kv_compress="2x2", kv_layers="all")))
    assert torch.allclose(patched, compressed, atol=1e-6)
    assert not torch.allclose(patched, _latent(server, fresh), atol=1e-4)


def test_null_caption_negative_and_img2img_and_upscale(server):
    graph = _graph("sigma-tiny.safetensors", 128, 96, "off", 9, steps=4)
    graph["sample"]["inputs"].pop("negative")  # learned null caption
    graph["encode"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["decode", 0], "vae": ["vae", 0]}}
    graph["img2img"] = {"class_type": "KSampler", "inputs": {
        "model": ["dit", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["encode", 0],
        "seed": 1, "steps": 4, "cfg": 4.5, "sampler_name": "dpmpp_2m", "scheduler": "pixart_reference", "denoise": 0.5}}
    graph["upscale"] = {"class_type": "LatentUpscale", "inputs": {
        "samples": ["img2img", 0], "upscale_method": "bilinear", "width": 192, "height": 160, "crop": "disabled"}}
    graph["hires"] = {"class_type": "PixArtKVSampler", "inputs": {**graph["sample"]["inputs"], "latent_image":
                                                                  ["upscale", 0], "denoise": 0.6, "kv_compress": "2x2"}}
    graph["decode2"] = {"class_type": "PixArtVAEDecode", "inputs": {"samples": ["hires", 0], "vae": ["vae", 0],
                                                                    "tiling": "on", "tile_size": 256}}
    graph["save2"] = {"class_type": "SaveImage", "inputs": {"images": ["decode2", 0], "filename_prefix": "hires"}}
    entry = server.run(graph)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    image = Image.open(server.output_path(entry["outputs"]["save2"]["images"][0]))
    assert image.size == (192, 160)


def test_schedulers_and_samplers_are_registered(server):
    required = server.get("/object_info/KSampler")["KSampler"]["input"]["required"]
    assert {"pixart_reference", "pixart_sa_solver", "pixart_lcm", "pixart_dmd"} <= set(required["scheduler"][0])
    assert {"pixart_sa_solver", "pixart_lcm", "pixart_dmd"} <= set(required["sampler_name"][0])


TINY_NAMES = {"t5xxl_fp16.safetensors": "t5-tiny.safetensors", "sdxl_vae.safetensors": "vae-tiny.safetensors",
              "vae-ft-mse-840000-ema-pruned.safetensors": "vae-tiny.safetensors",
              "PixArt-Sigma-XL-2-1024-MS.pth": "sigma-tiny.safetensors", "PixArt-Sigma-XL-2-2K-MS.pth": "sigma-tiny.pth",
              "PixArt-XL-2-1024-MS.pth": "alpha-tiny.safetensors", "PixArt-XL-2-512x512.pth": "alpha-tiny.safetensors",
              "diffusers/PixArt-Alpha-DMD-XL-2-512x512": "alpha-tiny.safetensors",
              "diffusers/PixArt-LCM-XL-2-1024-MS": "alpha-tiny.safetensors",
              "PixArt-XL-2-1024-ControlNet.pth": "PixArt-XL-2-1024-ControlNet-tiny.pth"}
CONTROL_BASE = "alpha-controlnet-base-tiny.safetensors"  # a ControlNet's base: as deep as the ControlNet needs


def _write_tiny_controlnet(base: str) -> None:
    from safetensors.torch import save_file

    from bench.fixtures.controlnet import base_original, save_controlnet_files, tiny_controlnet

    net = tiny_controlnet()
    save_controlnet_files(net, os.path.join(base, "models", "controlnet"), name="PixArt-XL-2-1024-ControlNet-tiny")
    save_file(base_original(net), os.path.join(base, "models", "diffusion_models", CONTROL_BASE))


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(os.path.dirname(__file__), "..", "..",
                                                                 "example_workflows", "api"))))
def test_api_examples_run_on_tiny_models(server, name):
    """Each API-format example, with the published file names swapped for the tiny models, 128 px unbinned, 2 steps."""
    import json

    from bench.fixtures.pack import ROOT

    with open(os.path.join(ROOT, "example_workflows", "api", name), encoding="utf-8") as fh:
        graph = json.load(fh)
    controlled = any(node["class_type"] == "PixArtControlNetLoader" for node in graph.values())
    if controlled:
        _write_tiny_controlnet(server.base)
    for node in graph.values():
        inputs = node["inputs"]
        for key in ("t5_name", "dit_name", "vae_name", "control_net_name"):
            if key in inputs:
                inputs[key] = CONTROL_BASE if controlled and key == "dit_name" else TINY_NAMES[inputs[key]]
        if node["class_type"] == "PixArtEmptyLatent":  # binning would generate at the 1024 bin: CPU-slow decode
            inputs.update(width=128, height=128, binning="off")
        if node["class_type"] == "PixArtKVSampler":
            inputs["steps"] = 2
        if node["class_type"] == "LoadImage":
            Image.new("RGB", (128, 128), (120, 80, 200)).save(os.path.join(server.base, "input", "example.png"))
    entry = server.run(graph)
    assert entry["status"]["status_str"] == "success", error_message(entry)
