"""PixArt-δ ControlNet-Transformer ("ControlNet-Half"; Chen et al. 2024, arXiv:2401.05252, section 4).

A trainable copy of the DiT's first N blocks (13 in the published checkpoints) runs beside the base model. The hint
(a VAE-encoded control image) is embedded with the base model's own patch embedding and positional embedding; control
block 0 adds before_proj(hint tokens) to the output of base block 0, every control block i feeds the next, and its
after_proj output is added to the input of base block i + 1. Both projections are zero-initialised in training, so an
untrained copy changes nothing. Because control block 0 reads base block 0's output, the branch runs inside the DiT
forward (PixArtDiT.forward takes ControlInputs); it cannot be computed beforehand as residuals.

Module names follow the official checkpoints (`controlnet.N.copied_block.*`, `controlnet.0.before_proj`,
`controlnet.N.after_proj`); layer classes come from `operations` and attention is passed in, as in dit.py.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from .blocks import PixArtBlock
from .config import DiTConfig
from .encoded_caption import EncodedCaption, encode_caption

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControlNetConfig:
    """The shape of a PixArt ControlNet, read from its weights."""

    hidden_size: int
    num_heads: int
    mlp_hidden: int
    depth: int  # copied blocks (13 in the published checkpoints)
    qk_norm: bool = False
    base: DiTConfig | None = None  # the base model the file carries a copy of (official layout), as evidence

    def describe(self) -> str:
        base = f", trained on {self.base.describe()}" if self.base is not None else ""
        return f"PixArt ControlNet: {self.depth} copied blocks, hidden {self.hidden_size}, {self.num_heads} heads{base}"


class ControlBlock(nn.Module):
    """One copied block with its zero-initialised projections. Keys: copied_block.*, before_proj (block 0), after_proj."""

    def __init__(self, index: int, config: ControlNetConfig, operations, dtype=None, device=None):
        super().__init__()
        dim = config.hidden_size
        self.copied_block = PixArtBlock(dim, config.num_heads, config.mlp_hidden, 0, config.qk_norm, operations,
                                        dtype, device)
        self.before_proj = operations.Linear(dim, dim, dtype=dtype, device=device) if index == 0 else None
        self.after_proj = operations.Linear(dim, dim, dtype=dtype, device=device)


class PixArtControlNet(nn.Module):
    def __init__(self, config: ControlNetConfig, operations=nn, dtype=None, device=None):
        super().__init__()
        self.config = config
        self.dtype = dtype  # the storage dtype hosts read (ComfyUI's ControlNet casts the hint to it)
        self.controlnet = nn.ModuleList(ControlBlock(i, config, operations, dtype, device) for i in range(config.depth))

    def forward(self, hint: torch.Tensor, **host_arguments) -> list[ControlInput]:
        """The ControlNet applied to one DiT call: hint (B, C, H, W), the control image already encoded and scaled like
        the latent. Hosts call a control model with the noisy latent, timesteps and caption too (host_arguments); the
        copied blocks read base block 0's output, so they run inside the DiT's forward, which takes what this returns."""
        return [ControlInput(self, hint)]

    def check_base(self, base: DiTConfig) -> str | None:
        """Why this ControlNet cannot run on a DiT of config `base`, or None when it can."""
        if base.hidden_size != self.config.hidden_size:
            return f"hidden width {self.config.hidden_size} vs the model's {base.hidden_size}"
        if base.depth <= self.config.depth:
            return f"{self.config.depth} copied blocks need a model of more blocks; the model has {base.depth}"
        return None

    def encode_caption(self, projection: nn.Module, context: torch.Tensor, context_mask: torch.Tensor | None,
                       dtype: torch.dtype) -> EncodedCaption:
        """The copied blocks' cross-attention keys/values on the DiT's caption projection (its y_embedder).
        context: (B, L, caption_channels); context_mask: (B, L)."""
        return encode_caption(projection, [block.copied_block.cross_attn.kv_linear for block in self.controlnet],
                              context, context_mask, dtype)


@dataclass
class ControlInput:
    """One ControlNet applied to one DiT call: the hint latent (already scaled like the model's latents), the strength
    its residuals are added with, and optionally the copied blocks' encoded caption (else encoded from the context)."""

    net: PixArtControlNet
    hint: torch.Tensor  # (B, C, H, W), the same H, W as the latent
    strength: float = 1.0
    caption: EncodedCaption | None = None  # of net.encode_caption


class ControlBranch:
    """The running state of one ControlInput through one forward: the copied blocks' hidden states."""

    def __init__(self, control: ControlInput, hint_tokens: torch.Tensor, caption: EncodedCaption):
        self.blocks = control.net.controlnet
        self.strength = control.strength
        self.hint_tokens = hint_tokens  # (B, N, D)
        self.caption = caption
        self.state: torch.Tensor | None = None  # (B, N, D) output of the last copied block

    def residual(self, index: int, tokens: torch.Tensor, t_mod: torch.Tensor, grid: tuple[int, int], attention,
                 compress) -> torch.Tensor | None:
        """Run copied block `index`; returns strength * after_proj(its output), to add to base block index + 1's
        input, or None past the last copied block. tokens: (B, N, D) output of base block `index` (read by block 0)."""
        if index >= len(self.blocks):
            return None
        block = self.blocks[index]
        key, value = self.caption.kv[index]
        if index == 0:
            start = tokens + block.before_proj(self.hint_tokens)  # (B, N, D)
        else:
            start = self.state
        self.state = block.copied_block(start, key, value, self.caption.bias, t_mod, grid, attention, compress)
        skip = block.after_proj(self.state)  # (B, N, D)
        return skip if self.strength == 1.0 else skip * self.strength
