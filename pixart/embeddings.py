"""Input embeddings of the PixArt DiT: patches, timesteps, micro-conditions, captions, 2-D positions.

Positional and timestep embeddings follow the sin-cos formulation of DiT / PixArt-α
(Chen et al., 2023, arXiv:2310.00426) and the PixArt-Σ repository (arXiv:2403.04692).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import Mlp

FREQUENCY_CHANNELS = 256  # sinusoid width fed to the timestep and size MLPs


def sinusoid(values: torch.Tensor, channels: int = FREQUENCY_CHANNELS, max_period: float = 10000.0) -> torch.Tensor:
    """Cos-then-sin embedding of scalars. (N,) -> (N, channels) float32."""
    half = channels // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    args = values.float()[:, None] * freqs[None]  # (N, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoid -> Linear -> SiLU -> Linear. Keys: mlp.0, mlp.2."""

    def __init__(self, out_features: int, operations, dtype=None, device=None):
        super().__init__()
        self.mlp = nn.Sequential(
            operations.Linear(FREQUENCY_CHANNELS, out_features, dtype=dtype, device=device),
            nn.SiLU(),
            operations.Linear(out_features, out_features, dtype=dtype, device=device),
        )

    def forward(self, values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # (N,) -> (N, out_features)
        return self.mlp(sinusoid(values).to(dtype))


class SizeEmbedder(TimestepEmbedder):
    """α-1024 micro-condition embedder: each of the k values per sample gets its own embedding.

    (B, k) -> (B, k * out_features)
    """

    def forward(self, values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        batch = values.shape[0]
        return super().forward(values.reshape(-1), dtype).reshape(batch, -1)


class CaptionProjection(nn.Module):
    """T5 features -> model width (y_proj.fc1, GELU-tanh, y_proj.fc2), plus the learned null caption."""

    def __init__(self, caption_channels: int, hidden_size: int, tokens: int, with_null_caption: bool,
                 operations, dtype=None, device=None):
        super().__init__()
        self.y_proj = Mlp(caption_channels, hidden_size, operations, dtype, device, out_features=hidden_size)
        if with_null_caption:
            self.y_embedding = nn.Parameter(torch.empty(tokens, caption_channels, dtype=dtype, device=device))
        else:
            self.y_embedding = None

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        # (B, L, caption_channels) -> (B, L, D)
        return self.y_proj(context)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens. (B, C, H, W) -> (B, H/p * W/p, D). Key: proj."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int, operations, dtype=None, device=None):
        super().__init__()
        self.proj = operations.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size,
                                      dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()  # row-major tokens keep later ops copy-free


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) float64 -> (M, dim): sin half then cos half."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = positions[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def _sincos_2d_cpu(dim: int, grid_h: int, grid_w: int, base_size: int, pe_interpolation: float) -> torch.Tensor:
    # Positions are scaled so that any grid spans the trained grid (base_size), then divided by pe_interpolation.
    # Positions in float32 (as the reference implementations), frequencies in float64.
    pos_h = (torch.arange(grid_h, dtype=torch.float32) / (grid_h / base_size) / pe_interpolation).double()
    pos_w = (torch.arange(grid_w, dtype=torch.float32) / (grid_w / base_size) / pe_interpolation).double()
    rows = pos_h[:, None].expand(grid_h, grid_w).reshape(-1)  # (N,) row-major token order
    cols = pos_w[None, :].expand(grid_h, grid_w).reshape(-1)
    # First half encodes the column (x), second half the row (y).
    return torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=1).float()  # (N, dim)


_DEVICE_CACHE: dict[tuple, torch.Tensor] = {}


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, base_size: int, pe_interpolation: float,
                        device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """2-D sin-cos positional embedding for a grid_h x grid_w token grid. -> (1, N, dim).

    Computed in float64 once per (grid, device, dtype) and reused across sampling steps.
    """
    key = (dim, grid_h, grid_w, base_size, float(pe_interpolation), str(device), dtype)
    cached = _DEVICE_CACHE.get(key)
    if cached is None:
        if len(_DEVICE_CACHE) >= 16:
            _DEVICE_CACHE.clear()
        cached = _sincos_2d_cpu(dim, grid_h, grid_w, base_size, float(pe_interpolation))
        cached = cached.to(device=device, dtype=dtype).unsqueeze(0)
        _DEVICE_CACHE[key] = cached
    return cached
