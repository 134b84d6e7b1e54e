"""Default attention function: torch's scaled_dot_product_attention.

Any function with this signature can be injected into the DiT (ComfyUI's `optimized_attention`
has it): tokens in, tokens out, heads folded into the channel dimension.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_key_bias(dtype: torch.dtype) -> float:
    """Additive bias for padded keys: half the dtype's lowest value. exp() of it is exactly 0, so padding
    gets no weight however large the real scores are, and unlike -inf a fully masked row cannot become NaN."""
    return torch.finfo(dtype).min / 2


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, Nq, C), (B, Nk, C), (B, Nk, C) -> (B, Nq, C); mask: additive, broadcastable to (B, heads, Nq, Nk)."""
    batch, _, channels = q.shape
    head_dim = channels // heads
    q, k, v = (t.view(batch, -1, heads, head_dim).transpose(1, 2) for t in (q, k, v))  # (B, h, N, d)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(batch, -1, channels)


def key_padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Key mask (B, Nk) of 1 = keep / 0 = padding -> additive bias (B, 1, 1, Nk)."""
    return ((1.0 - mask.to(dtype)) * masked_key_bias(dtype))[:, None, None, :]
