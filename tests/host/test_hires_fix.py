"""Host tier: the size PixArt VAE Decode resizes a binned image back to follows the latent through core latent nodes
(one API graph on a real server: 200x120 px requested from the 256-trained model, binned to 320x192)."""

import pytest
from PIL import Image

from bench.fixtures.comfy_server import error_message
from bench.fixtures.models_folder import REPO
from host.comfy_host import require_comfyui

require_comfyui()
REQUESTED = (200, 120)  # width, height; the 256 table's 0.6 bin: 320x192


def _sampler(latent, denoise=1.0, seed=3):
    return {"class_type": "PixArtKVSampler", "inputs": {
        "model": ["dit", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": latent, "seed": seed,
        "steps": 2, "cfg": 4.5, "sampler_name": "dpmpp_2m", "scheduler": "pixart_reference", "denoise": denoise,
        "kv_compress": "off", "kv_layers": "", "kv_mode": "avg", "kv_steps": 1.0}}


def _decoded(name, latent):
    return {f"decode_{name}": {"class_type": "PixArtVAEDecode", "inputs": {"samples": latent, "vae": ["vae", 0],
                                                                           "tiling": "off", "tile_size": 1024}},
            f"save_{name}": {"class_type": "SaveImage", "inputs": {"images": [f"decode_{name}", 0],
                                                                   "filename_prefix": f"hires_{name}"}}}


def _graph() -> dict:
    width, height = REQUESTED
    graph = {
        "t5": {"class_type": "PixArtT5Loader", "inputs": {"t5_name": f"diffusers/{REPO}", "dtype": "fp32",
                                                           "device": "default", "caption_length": "sigma_300"}},
        "pos": {"class_type": "PixArtTextEncode", "inputs": {"clip": ["t5", 0], "text": "a red dog"}},
        "neg": {"class_type": "PixArtTextEncode", "inputs": {"clip": ["t5", 0], "text": ""}},
        "dit": {"class_type": "PixArtDiTLoader", "inputs": {"dit_name": "sigma256-tiny.pth", "weight_dtype": "fp32"}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "vae-tiny.safetensors"}},
        "latent": {"class_type": "PixArtEmptyLatent", "inputs": {"width": width, "height": height, "batch_size": 1,
                                                                 "binning": "model", "model": ["dit", 0]}},
        "first": _sampler(["latent", 0]),
        "by2": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["first", 0], "upscale_method": "bilinear",
                                                            "scale_by": 2.0}},
        "by2_pass": _sampler(["by2", 0], denoise=0.5),
        "by1_5": {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["first", 0], "upscale_method": "bilinear",
                                                              "scale_by": 1.5}},
        "stated": {"class_type": "LatentUpscale", "inputs": {"samples": ["first", 0], "upscale_method": "bilinear",
                                                             "width": 400, "height": 240, "crop": "disabled"}},
        "stated_pass": _sampler(["stated", 0], denoise=0.5),
        "crop": {"class_type": "LatentCrop", "inputs": {"samples": ["first", 0], "width": 160, "height": 96, "x": 0,
                                                        "y": 0}},
        "batch": {"class_type": "LatentBatch", "inputs": {"samples1": ["first", 0], "samples2": ["latent", 0]}},
        "composite": {"class_type": "LatentComposite", "inputs": {"samples_to": ["first", 0],
                                                                  "samples_from": ["crop", 0], "x": 16, "y": 16,
                                                                  "feather": 0}},
        "encode": {"class_type": "VAEEncode", "inputs": {"pixels": ["decode_plain", 0], "vae": ["vae", 0]}},
        "img2img": _sampler(["encode", 0], denoise=0.5),
    }
    for name, latent in {"plain": ["first", 0], "by2": ["by2_pass", 0], "by1_5": ["by1_5", 0],
                         "stated": ["stated_pass", 0], "crop": ["crop", 0], "batch": ["batch", 0],
                         "composite": ["composite", 0], "img2img": ["img2img", 0]}.items():
        graph.update(_decoded(name, latent))
    return graph


@pytest.fixture(scope="module")
def sizes(server):
    entry = server.run(_graph(), timeout=900)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    out = {}
    for node, output in entry["outputs"].items():
        if node.startswith("save_"):
            out[node[len("save_"):]] = [Image.open(server.output_path(image)).size for image in output["images"]]
    print("\n" + ", ".join(f"{name}: {' '.join(f'{w}x{h}' for w, h in found)}" for name, found in sorted(out.items())))
    return out


def test_binned_image_goes_back_to_the_request(sizes):
    assert sizes["plain"] == [REQUESTED]


def test_hires_fix_by_a_factor_gives_the_request_times_that_factor(sizes):
    assert sizes["by2"] == [(400, 240)]  # LatentUpscaleBy 2 -> second pass at denoise 0.5
    assert sizes["by1_5"] == [(300, 180)]


def test_a_stated_size_is_kept(sizes):
    assert sizes["stated"] == [(400, 240)]  # Upscale Latent to 400x240 (1.25x the 320x192 bin) -> second pass
    assert sizes["crop"] == [(160, 96)]


def test_batch_composite_and_img2img_keep_the_request(sizes):
    assert sizes["batch"] == [REQUESTED, REQUESTED]
    assert sizes["composite"] == [REQUESTED]
    assert sizes["img2img"] == [REQUESTED]  # VAEEncode of the resized image: a new latent at the requested size
