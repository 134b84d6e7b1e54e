"""The host tier's ComfyUI: found through COMFYUI_PATH (a checkout with its requirements installed) or by this pack
sitting in ComfyUI/custom_nodes/, else the host tier is skipped with the reason printed; and ComfyUI's own sampling
of a tiny latent."""
from __future__ import annotations

import pytest
import torch

from bench.fixtures.pack import comfyui_path


def require_comfyui() -> str:
    path = comfyui_path()
    if path is None:
        pytest.skip("host tier skipped: no ComfyUI found (set COMFYUI_PATH to a ComfyUI checkout with its requirements "
                    "installed, or install this pack in ComfyUI/custom_nodes)", allow_module_level=True)
    return path


def sample_tiny(patcher, positive, negative, seed: int = 0, steps: int = 3) -> torch.Tensor:
    """ComfyUI's own sampling (dpmpp_2m, normal, CFG 4.5) of a 96 x 128 px latent from zeros."""
    import comfy.sample

    latent = torch.zeros(1, 4, 12, 16)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(patcher, noise, steps, 4.5, "dpmpp_2m", "normal", positive, negative, latent,
                               denoise=1.0, seed=seed, disable_pbar=True)
