"""What the transformer blocks read from a caption: every block's cross-attention keys and values and the padding bias.

They depend on the caption and the weights alone, not on the latent or the timestep, so a sampling run can encode each
caption once and reuse it at every step. The DiT's blocks and a ControlNet's copied blocks encode the same way, each
with its own kv_linear weights on the DiT's caption projection.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .attention import key_padding_bias


@dataclass
class EncodedCaption:
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per block: keys, values, each (B, L', D)
    bias: torch.Tensor | None  # (B, 1, 1, L') additive; None when no padding is left after trimming

    @property
    def batch(self) -> int:
        return self.kv[0][0].shape[0]


def trim_padding(context: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop caption positions that are padding in every sample. (B, L, C), (B, L) -> (B, L', C), (B, L').

    Exact: padded keys get exactly zero attention weight, so removing them changes no result, while the
    caption projection and cross-attention then work on the longest real prompt instead of 300 tokens.
    """
    used = mask.bool().any(dim=0).nonzero()
    keep = int(used.max()) + 1 if used.numel() else 1
    if keep == mask.shape[1]:
        return context, mask
    return context[:, :keep], mask[:, :keep]


def encode_caption(projection: nn.Module, kv_linears: Sequence[nn.Module], context: torch.Tensor,
                   context_mask: torch.Tensor | None, dtype: torch.dtype) -> EncodedCaption:
    """T5 features -> each block's cross-attention keys/values.

    context: (B, L, caption_channels); context_mask: (B, L) 1 for real tokens, 0 for padding. Positions that are padding
    in every sample are dropped first (exact), and when no padding remains the mask is dropped too, which lets attention
    use its fused unmasked kernels. projection: the DiT's caption projection; kv_linears: one per block.
    """
    if context_mask is not None:
        context, context_mask = trim_padding(context, context_mask.to(context.device))
        if bool(context_mask.bool().all()):
            context_mask = None
    projected = projection(context.to(dtype))  # (B, L', D)
    kv = [kv_linear(projected).chunk(2, dim=-1) for kv_linear in kv_linears]  # per block 2 x (B, L', D)
    bias = None if context_mask is None else key_padding_bias(context_mask.to(projected.device), dtype)
    return EncodedCaption(kv=kv, bias=bias)
