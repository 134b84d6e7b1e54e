"""A stand-in for ComfyUI's casting ops, for GPU runs without ComfyUI (bench/gpu/casting.py labels its figures so):
layer classes for `PixArtDiT(operations=standin_ops)` that store weights in a narrow dtype (float8_e4m3fn) and cast
them to the activations' dtype inside every forward, the manual-cast pattern of `comfy.ops.manual_cast` reduced to
plain torch.

PixArtDiT takes exactly Linear, Conv2d and LayerNorm from `operations` (pixart/dit.py, blocks.py, embeddings.py);
its adaLN tables, null caption and activations are plain torch and stay in the compute dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CastWeights:
    """Mixin: weight and bias converted to the input's dtype on every call (no copy is kept)."""

    def cast_params(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        weight = None if self.weight is None else self.weight.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return weight, bias


class Linear(CastWeights, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, *self.cast_params(x))  # (..., in) -> (..., out)


class Conv2d(CastWeights, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, *self.cast_params(x))  # (B, C_in, H, W) -> (B, C_out, H', W')


class LayerNorm(CastWeights, nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, *self.cast_params(x), self.eps)  # (..., D) -> (..., D)


def store_weights(model: nn.Module, dtype: torch.dtype) -> None:
    """Keep the weight matrices of every Linear / Conv2d above in `dtype` (biases and norms stay as they are)."""
    for module in model.modules():
        if isinstance(module, (Linear, Conv2d)):
            module.weight = nn.Parameter(module.weight.detach().to(dtype), requires_grad=False)


def storage_supported(dtype: torch.dtype, compute: torch.dtype, device: torch.device) -> str | None:
    """None when weights can be stored in `dtype` and cast to `compute` on `device`, else the reason why not."""
    try:
        weight = torch.ones(8, 8, device=device).to(dtype)
        F.linear(torch.ones(2, 8, device=device, dtype=compute), weight.to(compute))
    except (RuntimeError, TypeError) as err:
        return f"{dtype} weights cannot be cast to {compute} on {device}: {err}"
    return None
