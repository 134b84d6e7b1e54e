"""The host tier's ComfyUI: found through COMFYUI_PATH (a checkout with its requirements installed) or by this pack
sitting in ComfyUI/custom_nodes/, else the host tier is skipped with the reason printed; ComfyUI's own sampling of a
tiny latent and a CLIP's conditioning of a prompt, which the host tests compare."""
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


def t5_conditioning(clip, text: str) -> torch.Tensor:
    """A CLIP's conditioning of `text` at its real (unpadded) tokens, in float32: (tokens, d_model)."""
    out = clip.encode_from_tokens(clip.tokenize(text), return_dict=True)
    return out["cond"][0, out["attention_mask"][0].bool()].float()


def relative_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, in float32."""
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def sample_tiny(patcher, positive, negative, seed: int = 0, steps: int = 3) -> torch.Tensor:
    """ComfyUI's own sampling (dpmpp_2m, normal, CFG 4.5) of a 96 x 128 px latent from zeros."""
    import comfy.sample

    latent = torch.zeros(1, 4, 12, 16)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(patcher, noise, steps, 4.5, "dpmpp_2m", "normal", positive, negative, latent,
                               denoise=1.0, seed=seed, disable_pbar=True)
