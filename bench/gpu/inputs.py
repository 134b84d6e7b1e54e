"""What the GPU harness runs: PixArt-Σ's shapes at full size and for the smoke run, the CFG caption batch and the
seeded noise, as diffusers' pipelines draw them."""
from __future__ import annotations

import torch
from torch import nn

FULL = {"depth": 28, "heads": 16, "caption_channels": 4096}  # hidden 16 x 72 = 1152, mlp 4608
SMOKE = {"depth": 2, "heads": 2, "caption_channels": 64}  # head dim stays 72
CAPTION_TOKENS = 300
REAL_TOKENS = (40, 120)  # uncond, cond: diffusers' CFG batch order
TIMESTEP = 500.0  # for single-step timings
BYTES_PER_GB = 1e9
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def caption_inputs(channels: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Random T5 features and their padding mask. -> (2, 300, channels) uncond then cond, (2, 300) 1 = real."""
    context = torch.randn(2, CAPTION_TOKENS, channels, generator=torch.Generator("cpu").manual_seed(1))
    mask = torch.zeros(2, CAPTION_TOKENS, dtype=torch.long)
    for row, real in enumerate(REAL_TOKENS):
        mask[row, :real] = 1
    return context.to(device, dtype), mask.to(device)


def seeded_noise(side: int, device: torch.device, dtype: torch.dtype, seed: int = 2) -> torch.Tensor:
    """(1, 4, side, side) from a CPU generator, as diffusers' pipelines draw it."""
    return torch.randn(1, 4, side, side, generator=torch.Generator("cpu").manual_seed(seed)).to(device, dtype)


def weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())
