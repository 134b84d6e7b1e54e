"""What the CPU benchmarks share: PixArt-Σ's real width at a chosen depth, and finding a ComfyUI checkout."""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from pixart.config import SIGMA, DiTConfig  # noqa: E402


def sigma_width_config(depth: int = 2, **overrides) -> DiTConfig:
    """PixArt-Σ 1024's shapes (hidden 1152, 16 heads of 72, MLP 4608, caption 300 x 4096) with `depth` blocks."""
    fields = dict(family=SIGMA, hidden_size=1152, depth=depth, num_heads=16, patch_size=2, in_channels=4,
                  out_channels=8, mlp_hidden=4608, caption_channels=4096, caption_tokens=300, sample_size=128,
                  pe_interpolation=2.0)
    return DiTConfig(**{**fields, **overrides})


def comfyui_or_exit() -> str:
    """The ComfyUI checkout in COMFYUI_PATH, with tests/ importable for its host helpers; exits when unset."""
    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui:
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout whose requirements are installed")
    tests = os.path.join(ROOT, "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return comfyui
