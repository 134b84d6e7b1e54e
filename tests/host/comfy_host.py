"""Finding and importing a real ComfyUI for the host tier, and the tiny models it runs.

ComfyUI is found through COMFYUI_PATH (a checkout with its requirements installed) or by this pack sitting in
ComfyUI/custom_nodes/. Without it the host tier is skipped with the reason printed.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = "pixart_sigma_nodes"


def comfyui_path() -> str | None:
    env = os.environ.get("COMFYUI_PATH")
    if env:
        return env if os.path.isfile(os.path.join(env, "comfy", "model_management.py")) else None
    parent = os.path.dirname(ROOT)
    if os.path.basename(parent) == "custom_nodes":
        candidate = os.path.dirname(parent)
        if os.path.isfile(os.path.join(candidate, "comfy", "model_management.py")):
            return candidate
    return None


def require_comfyui() -> str:
    path = comfyui_path()
    if path is None:
        pytest.skip("host tier skipped: no ComfyUI found (set COMFYUI_PATH to a ComfyUI checkout with its requirements "
                    "installed, or install this pack in ComfyUI/custom_nodes)", allow_module_level=True)
    return path


def import_comfy(path: str):
    """Import ComfyUI in-process on the CPU and this pack as a package; returns the pack module."""
    if path not in sys.path:
        sys.path.insert(0, path)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401  (device setup with --cpu)

    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, os.path.join(ROOT, "__init__.py"),
                                                      submodule_search_locations=[ROOT])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    return sys.modules[PACKAGE]


def sample_tiny(patcher, positive, negative, seed: int = 0, steps: int = 3) -> torch.Tensor:
    """ComfyUI's own sampling (dpmpp_2m, normal, CFG 4.5) of a 96 x 128 px latent from zeros."""
    import comfy.sample

    latent = torch.zeros(1, 4, 12, 16)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(patcher, noise, steps, 4.5, "dpmpp_2m", "normal", positive, negative, latent,
                               denoise=1.0, seed=seed, disable_pbar=True)


def tiny_t5(seed: int = 0, d_model: int = 32):
    """transformers T5EncoderModel (T5-v1.1 style: gated-gelu, untied) with tiny widths and the full vocabulary."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=32128, d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, tie_word_embeddings=False)
    model = T5EncoderModel(config).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * (0.5 if param.ndim == 1 else 0.2))
    return model


def t5_state_dict(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}


def tiny_vae(seed: int = 0):
    """diffusers AutoencoderKL with the SD/SDXL layout (ComfyUI reads this layout with fixed widths)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2,
                        scaling_factor=0.13025).eval()
    with torch.no_grad():  # keep decoded pixels inside [-1, 1], as a trained VAE's mostly are
        vae.decoder.conv_out.weight.mul_(0.05)
        vae.decoder.conv_out.bias.zero_()
    return vae
