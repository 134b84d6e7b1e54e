"""Host tier, in-process: PixArt Sampler runs core KSampler's own sampling path (nodes.common_ksampler), so a latent
carrying current ComfyUI's downscale ratios samples exactly as through KSampler; kv_steps is the fraction of the steps
actually run (after denoise, on any scheduler's spacing), counted in compressed model calls."""
import importlib

import pytest
import torch

from bench.fixtures.pack import import_comfy
from host.comfy_host import require_comfyui

COMFYUI = require_comfyui()
import_comfy(COMFYUI)

from pixart_sigma_nodes.nodes.sampler_node import PixArtKVSampler  # noqa: E402
from pixart_sigma_nodes.pixart import blocks  # noqa: E402

comfy_nodes = importlib.import_module("nodes")  # ComfyUI's core nodes module


def _pixart_sampler(model, conds, latent, steps=6, denoise=1.0, scheduler="normal", sampler="dpmpp_2m", **kv):
    settings = {"kv_compress": "off", "kv_layers": "", "kv_mode": "avg", "kv_steps": 1.0, **kv}
    return PixArtKVSampler.execute(model=model, positive=conds[0], negative=conds[1], latent_image=latent, seed=5,
                                   steps=steps, cfg=4.5, sampler_name=sampler, scheduler=scheduler, denoise=denoise,
                                   **settings).args[0]


def test_latent_with_downscale_ratios_samples_as_in_ksampler(pixart_model, tiny_conds):
    """v0.33's empty latents carry downscale_ratio_spacial; its KSampler hands it to fix_empty_latent_channels and
    drops it from its output (0.3.64's keeps it). Ours does exactly what the host's does, being the same code."""
    latent = {"samples": torch.zeros(1, 4, 12, 16), "downscale_ratio_spacial": 8, "pixart_request": (96, 128)}
    ours = _pixart_sampler(pixart_model, tiny_conds, dict(latent))
    core = comfy_nodes.common_ksampler(pixart_model, 5, 6, 4.5, "dpmpp_2m", "normal", *tiny_conds, dict(latent))[0]
    assert torch.equal(ours["samples"], core["samples"])
    assert set(ours) == set(core) and ours["pixart_request"] == (96, 128)


@pytest.fixture
def compressed_calls(monkeypatch):
    """Model calls that ran KV compression: compress_tokens runs twice (keys, values) per compressed layer."""
    calls = []
    original = blocks.compress_tokens

    def counting(tokens, *args, **kwargs):
        calls.append(tokens.shape[0])
        return original(tokens, *args, **kwargs)

    monkeypatch.setattr(blocks, "compress_tokens", counting)
    return calls


@pytest.mark.parametrize("sampler, calls_per_step", [("euler", 1), ("heun", 2)])
@pytest.mark.parametrize("scheduler", ["normal", "karras"])
@pytest.mark.parametrize("steps, denoise, kv_steps, compressed", [(10, 0.5, 0.5, 5), (10, 1.0, 0.5, 5), (8, 0.5, 1.0, 8),
                                                                  (8, 0.5, 0.3, 3), (7, 0.35, 0.5, 4)])
def test_kv_steps_is_the_fraction_of_steps_run(pixart_model, tiny_conds, compressed_calls, sampler, calls_per_step,
                                               scheduler, steps, denoise, kv_steps, compressed):
    """ComfyUI runs `steps` steps at any denoise (the last ones of a longer schedule): kv_steps 0.5 of 10 compresses
    the first 5, 0.3 of 8 the first 3 (rounded up), on a 'normal' or a 'karras' spacing. Heun evaluates each step at
    both ends (its last step, to sigma 0, once): a call at the level where an uncompressed step starts runs
    uncompressed, so the end evaluation of the last compressed step is full."""
    latent = {"samples": torch.randn(1, 4, 12, 16, generator=torch.Generator().manual_seed(1))}
    _pixart_sampler(pixart_model, tiny_conds, latent, steps=steps, denoise=denoise, scheduler=scheduler, sampler=sampler,
                    kv_compress="2x2", kv_layers="all", kv_steps=kv_steps)
    depth = pixart_model.model.diffusion_model.config.depth
    expected = compressed if calls_per_step == 1 else 2 * compressed - 1
    assert len(compressed_calls) == expected * 2 * depth, (len(compressed_calls), expected)
