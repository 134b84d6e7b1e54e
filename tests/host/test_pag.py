"""Host tier: PixArt Perturbed-Attention Guidance in an API graph on a real server against diffusers'
PixArtSigmaPAGPipeline on the same tiny random weights (20 steps, cfg 4.5, DPM-Solver++ 2M), at the pipeline's
defaults (pag_scale 3, pag_applied_layers "blocks.1", which on a 12-block model means blocks 1, 10 and 11) and with two
other layer choices, one with an adaptive scale and through core KSampler; bad layer patterns."""
import os

import pytest
from safetensors.torch import save_file

from bench.fixtures.comfy_server import error_message
from bench.fixtures.models import original_layout, tiny_transformer
from bench.fixtures.reference_runs import compare, graph_outputs, reference_pipeline, text_to_image
from bench.fixtures.schedulers import pixart_sigma_scheduler
from host.comfy_host import require_comfyui

require_comfyui()
DIT = "sigma256-deep-tiny.safetensors"


@pytest.fixture(scope="module")
def deep_model(server):
    """A tiny PixArt-Σ 256 transformer with 12 blocks, so that diffusers' default layer pattern selects three."""
    model, null_caption = tiny_transformer("sigma", False, depth=12, seed=50, sample_size=32, interpolation_scale=0.5)
    save_file(original_layout(model, null_caption), os.path.join(server.base, "models", "diffusion_models", DIT))
    return model


def _pag_pipeline():
    """PixArtSigmaPAGPipeline; its adaptive scale is computed from the step's timestep. diffusers 0.42.1 passes the
    batch of timesteps (one per row, all equal) to _get_pag_scale, whose `if signal_scale < 0` then raises for any
    pag_adaptive_scale > 0; the formula is applied to the one timestep they share, nothing else changed."""
    from diffusers import PixArtSigmaPAGPipeline

    class Pipeline(PixArtSigmaPAGPipeline):
        def _get_pag_scale(self, t):
            return super()._get_pag_scale(t.flatten()[0] if hasattr(t, "flatten") else t)

    return Pipeline


def _graph(seed, scale, adaptive_scale, layers, sampler="PixArtKVSampler"):
    graph = text_to_image(DIT, "sigma_300", seed, f"pag-{seed}", model=("pag", 0))
    graph["pag"] = {"class_type": "PixArtPAG", "inputs": {"model": ["dit", 0], "scale": scale,
                                                          "adaptive_scale": adaptive_scale, "layers": layers}}
    if sampler == "KSampler":
        inputs = graph["sample"]["inputs"]
        graph["sample"] = {"class_type": "KSampler", "inputs": {
            key: inputs[key] for key in ("model", "positive", "negative", "latent_image", "seed", "steps", "cfg",
                                         "sampler_name", "scheduler", "denoise")}}
    return graph


@pytest.mark.parametrize("seed, scale, adaptive_scale, layers, sampler", [
    (31, 3.0, 0.0, "blocks.1", "PixArtKVSampler"),
    (32, 2.0, 0.0, "blocks.5", "PixArtKVSampler"),
    (33, 3.0, 0.002, "blocks.(0|7)", "KSampler"),
], ids=["defaults", "block-5", "blocks-0-7-adaptive-ksampler"])
def test_pag_equals_diffusers_pag_pipeline(server, deep_model, seed, scale, adaptive_scale, layers, sampler):
    ours = graph_outputs(server, _graph(seed, scale, adaptive_scale, layers, sampler))
    pipe = reference_pipeline(server, _pag_pipeline(), "sigma", deep_model, pixart_sigma_scheduler(),
                              pag_applied_layers=layers)
    compare(f"PAG {layers} scale {scale} adaptive {adaptive_scale} ({sampler})", "sigma", ours, pipe, seed,
            negative_prompt="", guidance_scale=4.5, num_inference_steps=20, max_sequence_length=300,
            pag_scale=scale, pag_adaptive_scale=adaptive_scale)


def test_pag_node_shows_the_blocks_and_changes_the_image(server, deep_model):
    entry = server.run(_graph(34, 3.0, 0.0, "blocks.1"))
    assert entry["status"]["status_str"] == "success", error_message(entry)
    assert entry["outputs"]["pag"]["text"] == ["PAG scale 3 on blocks 1, 10-11"]
    plain = _graph(34, 3.0, 0.0, "blocks.1")
    plain["sample"]["inputs"]["model"] = ["dit", 0]
    plain.pop("pag")
    for key in ("save_latent", "save"):
        plain[key]["inputs"]["filename_prefix"] = "pag-off"
    assert (graph_outputs(server, plain)[0] - graph_outputs(server, _graph(34, 3.0, 0.0, "blocks.1"))[0]).abs().max() > 1e-3


@pytest.mark.parametrize("layers, words", [("blocks.99", "matches no block"), ("blocks.(1", "not a regular expression")])
def test_bad_layer_pattern_is_a_node_error(server, deep_model, layers, words):
    entry = server.run(_graph(35, 3.0, 0.0, layers))
    assert entry["status"]["status_str"] == "error"
    text = error_message(entry)
    assert text.startswith("PixArtPAG:") and layers in text and words in text, text
    assert server.run(_graph(36, 3.0, 0.0, "blocks.1"))["status"]["status_str"] == "success"  # the server serves on
