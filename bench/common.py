"""What the benchmarks share: PixArt-Σ's real width at a chosen depth (our config, diffusers' transformer and the
conversion between them), and finding a ComfyUI checkout."""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pixart.checkpoint.detect import detect_config  # noqa: E402
from pixart.checkpoint.layouts import diffusers_to_internal  # noqa: E402
from pixart.config import SIGMA, DiTConfig  # noqa: E402
from pixart.dit import PixArtDiT  # noqa: E402

SOURCE = "PixArt-Sigma benchmark (random weights)"


def sigma_width_config(depth: int = 2, **overrides) -> DiTConfig:
    """PixArt-Σ 1024's shapes (hidden 1152, 16 heads of 72, MLP 4608, caption 300 x 4096) with `depth` blocks."""
    fields = dict(family=SIGMA, hidden_size=1152, depth=depth, num_heads=16, patch_size=2, in_channels=4,
                  out_channels=8, mlp_hidden=4608, caption_channels=4096, caption_tokens=300, sample_size=128,
                  pe_interpolation=2.0)
    return DiTConfig(**{**fields, **overrides})


def diffusers_transformer(depth: int = 2, heads: int = 16, caption_channels: int = 4096):
    """diffusers' PixArtTransformer2DModel shaped as PixArt-Σ 1024 (head dim 72), weights as initialised: callers
    randomise them. Built on torch's current default device."""
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=depth,
        sample_size=128, patch_size=2, cross_attention_dim=heads * 72, caption_channels=caption_channels,
        norm_type="ada_norm_single", use_additional_conditions=False, interpolation_scale=2,
    ).eval()


def ours_from(reference, dtype=None, device=None) -> tuple[PixArtDiT, dict]:
    """Our DiT with the weights of a diffusers PixArt transformer, and the converted state dict. -> (ours, state)"""
    state = diffusers_to_internal(dict(reference.state_dict()), SOURCE)
    ours = PixArtDiT(detect_config(state, SOURCE, dict(reference.config)), dtype=dtype, device=device).eval()
    ours.load_state_dict(state)
    return ours, state


def comfyui_or_exit() -> str:
    """The ComfyUI checkout in COMFYUI_PATH, with tests/ importable for its host helpers; exits when unset."""
    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui:
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout whose requirements are installed")
    tests = os.path.join(ROOT, "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return comfyui
