"""The PixArt-Σ / PixArt-α diffusion transformer (arXiv:2403.04692, arXiv:2310.00426).

Layer classes come from `operations` (torch.nn by default, comfy.ops inside ComfyUI) and attention
from an injected function, so the same module runs in plain torch and under ComfyUI's model management.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import key_padding_bias, sdpa_attention
from .blocks import FinalLayer, PixArtBlock
from .config import DiTConfig
from .embeddings import CaptionProjection, PatchEmbed, SizeEmbedder, TimestepEmbedder, sincos_pos_embed_2d
from .kv_compress import KVCompress, KVCompressError


class PixArtDiT(nn.Module):
    def __init__(self, config: DiTConfig, operations=nn, attention=sdpa_attention, dtype=None, device=None):
        super().__init__()
        self.config = config
        self.attention = attention
        dim = config.hidden_size
        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, dim, operations, dtype, device)
        self.t_embedder = TimestepEmbedder(dim, operations, dtype, device)
        self.t_block = nn.Sequential(nn.SiLU(), operations.Linear(dim, 6 * dim, dtype=dtype, device=device))
        self.y_embedder = CaptionProjection(config.caption_channels, dim, config.caption_tokens,
                                            config.has_null_caption, operations, dtype, device)
        if config.micro_conditions:
            self.csize_embedder = SizeEmbedder(dim // 3, operations, dtype, device)
            self.ar_embedder = SizeEmbedder(dim // 3, operations, dtype, device)
        self.blocks = nn.ModuleList(
            PixArtBlock(dim, config.num_heads, config.mlp_hidden,
                        config.kv_conv_ratio if i in config.kv_conv_layers else 0,
                        config.qk_norm, operations, dtype, device)
            for i in range(config.depth)
        )
        self.final_layer = FinalLayer(dim, config.patch_size, config.out_channels, operations, dtype, device)

    def check_kv_compress(self, compress: KVCompress | None) -> None:
        """Raise KVCompressError when a setting cannot run on this checkpoint."""
        if compress is None or compress.ratio == 1:
            return
        depth = self.config.depth
        beyond = sorted(i for i in compress.layers if not 0 <= i < depth)
        if beyond:
            raise KVCompressError(f"KV layers {beyond} do not exist: this model has {depth} blocks (0 to {depth - 1}).")
        if compress.mode == "conv":
            trained = self.config.kv_conv_layers
            if not trained:
                raise KVCompressError("KV mode 'conv' needs a checkpoint trained with KV compression "
                                      "(attn.sr weights); this one has none. Use 'avg', 'nearest' or 'uniform'.")
            missing = sorted(compress.layers - trained)
            if missing:
                raise KVCompressError(f"KV mode 'conv': blocks {missing} carry no trained compression conv; "
                                      f"choose layers among {sorted(trained)}.")
            if compress.ratio != self.config.kv_conv_ratio:
                raise KVCompressError(f"KV mode 'conv': the trained conv is {self.config.kv_conv_ratio}x"
                                      f"{self.config.kv_conv_ratio}; set the ratio to {self.config.kv_conv_ratio}.")

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None, c_size: torch.Tensor | None = None,
                c_ar: torch.Tensor | None = None, kv_compress: KVCompress | None = None,
                attention=None) -> torch.Tensor:
        """Predict epsilon (and learned variance) for a noisy latent.

        x: (B, C, H, W) latent; timestep: (B,) in [0, 1000); context: (B, L, caption_channels) T5 features;
        context_mask: (B, L) 1 for real tokens, 0 for padding; c_size: (B, 2) image (height, width) in
        pixels and c_ar: (B, 1) height / width, for micro-conditioned checkpoints (default: from x).
        Returns (B, out_channels, H, W).
        """
        cfg = self.config
        attention = attention or self.attention
        self.check_kv_compress(kv_compress)
        compress = kv_compress if kv_compress is not None and kv_compress.ratio > 1 else None
        batch, _, height, width = x.shape
        p = cfg.patch_size
        pad_h, pad_w = (-height) % p, (-width) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        grid = ((height + pad_h) // p, (width + pad_w) // p)
        dtype = x.dtype

        tokens = self.x_embedder(x)  # (B, N, D)
        tokens = tokens + sincos_pos_embed_2d(cfg.hidden_size, grid[0], grid[1], cfg.base_size,
                                              cfg.pe_interpolation, tokens.device, tokens.dtype)

        t_emb = self.t_embedder(timestep.expand(batch) if timestep.numel() == 1 else timestep, dtype)  # (B, D)
        if cfg.micro_conditions:
            if c_size is None:
                c_size = torch.tensor([[height * 8.0, width * 8.0]], device=x.device).expand(batch, 2)
            if c_ar is None:
                c_ar = (c_size[:, 0] / c_size[:, 1])[:, None]
            t_emb = t_emb + torch.cat([self.csize_embedder(c_size.to(x.device), dtype),
                                       self.ar_embedder(c_ar.to(x.device), dtype)], dim=1)
        t_mod = self.t_block(t_emb)  # (B, 6*D)

        if context_mask is not None:
            context, context_mask = trim_padding(context, context_mask.to(context.device))
        context = self.y_embedder(context.to(dtype))  # (B, L', D)
        context_bias = None if context_mask is None else key_padding_bias(context_mask.to(x.device), dtype)

        for index, block in enumerate(self.blocks):
            layer_compress = compress if compress is not None and compress.applies_to(index) else None
            tokens = block(tokens, context, context_bias, t_mod, grid, attention, layer_compress)

        out = self.final_layer(tokens, t_emb)  # (B, N, p*p*C_out)
        return self.unpatchify(out, grid)[:, :, :height, :width]

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, h*w, p*p*C) -> (B, C, h*p, w*p)."""
        p, channels = self.config.patch_size, self.config.out_channels
        batch = tokens.shape[0]
        out = tokens.reshape(batch, grid[0], grid[1], p, p, channels)
        out = out.permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
        return out.reshape(batch, channels, grid[0] * p, grid[1] * p)

    def null_caption(self, batch: int) -> torch.Tensor:
        """The checkpoint's learned empty-caption embedding. -> (B, caption_tokens, caption_channels)."""
        if self.y_embedder.y_embedding is None:
            raise ValueError("This checkpoint carries no learned null caption (y_embedder.y_embedding); "
                             "connect a negative prompt instead.")
        return self.y_embedder.y_embedding[None].expand(batch, -1, -1)


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

