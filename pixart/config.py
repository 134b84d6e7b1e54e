"""The DiT's shape and conditioning settings, as read from a checkpoint."""
from __future__ import annotations

from dataclasses import dataclass, field

SIGMA = "sigma"
ALPHA = "alpha"

# Caption length the text encoder pads to, per family (T5 tokens incl. EOS).
CAPTION_TOKENS = {SIGMA: 300, ALPHA: 120}

# PixArt keeps its attention heads 72 wide at every published size.
HEAD_DIM = 72


@dataclass(frozen=True)
class DiTConfig:
    """Everything needed to build a PixArt DiT; every field is read from the weights or config files."""

    family: str  # SIGMA or ALPHA
    hidden_size: int
    depth: int
    num_heads: int
    patch_size: int
    in_channels: int
    out_channels: int  # 8 with learned sigma: the first in_channels are epsilon
    mlp_hidden: int
    caption_channels: int  # T5 width (4096 for T5-v1.1-XXL)
    caption_tokens: int  # 300 (Σ) / 120 (α)
    sample_size: int  # trained latent side (128 for 1024 px)
    pe_interpolation: float
    micro_conditions: bool = False  # α-1024 csize/ar embedders
    has_null_caption: bool = False  # y_embedding present (learned null caption)
    qk_norm: bool = False
    kv_conv_layers: frozenset[int] = field(default_factory=frozenset)  # blocks with trained attn.sr/attn.norm
    kv_conv_ratio: int = 0  # kernel/stride of those trained convs

    @property
    def base_size(self) -> int:
        """Side of the trained token grid, the positional embedding's reference."""
        return self.sample_size // self.patch_size

    @property
    def learned_sigma(self) -> bool:
        return self.out_channels == 2 * self.in_channels

    @property
    def trained_resolution(self) -> int:
        """Trained image side in pixels (the VAE downsamples by 8)."""
        return self.sample_size * 8

    def describe(self) -> str:
        name = {SIGMA: "PixArt-Σ", ALPHA: "PixArt-α"}[self.family]
        size = "2K" if self.trained_resolution == 2048 else str(self.trained_resolution)
        extras = []
        if self.micro_conditions:
            extras.append("micro-conditions")
        if self.kv_conv_layers:
            extras.append(f"trained KV compression in {len(self.kv_conv_layers)} layers")
        tail = f" ({', '.join(extras)})" if extras else ""
        return (
            f"{name} {size}: {self.depth} blocks, hidden {self.hidden_size}, {self.num_heads} heads, "
            f"{self.caption_tokens} caption tokens, pe_interpolation {self.pe_interpolation:g}{tail}"
        )
