"""The PixArt-Σ / PixArt-α diffusion transformer (arXiv:2403.04692, arXiv:2310.00426).

Layer classes come from `operations` (torch.nn by default, comfy.ops inside ComfyUI) and attention
from an injected function, so the same module runs in plain torch and under ComfyUI's model management.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .attention import sdpa_attention
from .blocks import FinalLayer, PixArtBlock
from .config import DiTConfig
from .controlnet import ControlBranch, ControlInput
from .embeddings import CaptionProjection, PatchEmbed, SizeEmbedder, TimestepEmbedder, sincos_pos_embed_2d
from .encoded_caption import EncodedCaption, encode_caption
from .kv_compress import KVCompress, KVCompressError
from .patches import BlockPatches


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

    def encode_caption(self, context: torch.Tensor, context_mask: torch.Tensor | None = None,
                       dtype: torch.dtype | None = None) -> EncodedCaption:
        """T5 features (B, L, caption_channels) and mask (B, L) -> the blocks' cross-attention keys/values
        (pixart.encoded_caption)."""
        return encode_caption(self.y_embedder, [block.cross_attn.kv_linear for block in self.blocks], context,
                              context_mask, dtype or context.dtype)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor | None,
                context_mask: torch.Tensor | None = None, c_size: torch.Tensor | None = None,
                c_ar: torch.Tensor | None = None, kv_compress: KVCompress | None = None,
                attention=None, caption: EncodedCaption | None = None,
                control: list[ControlInput] | None = None,
                block_patches: Callable[[int], BlockPatches | None] | None = None) -> torch.Tensor:
        """Predict epsilon (and learned variance) for a noisy latent.

        x: (B, C, H, W) latent; timestep: (B,) in [0, 1000); context: (B, L, caption_channels) T5 features;
        context_mask: (B, L) 1 for real tokens, 0 for padding; c_size: (B, 2) image (height, width) in
        pixels and c_ar: (B, 1) height / width, for micro-conditioned checkpoints (default: from x).
        caption: the output of encode_caption for this context, to skip encoding it again (context is then unused).
        control: ControlNets to run beside the blocks (pixart.controlnet); their copied blocks compress K/V where the
        base block of the same index does.
        block_patches: index -> pixart.patches.BlockPatches for that block (None: as it is); the ControlNets' copied
        blocks are not patched.
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
        pos_embed = sincos_pos_embed_2d(cfg.hidden_size, grid[0], grid[1], cfg.base_size, cfg.pe_interpolation,
                                        tokens.device, tokens.dtype)  # (1, N, D)
        tokens = tokens + pos_embed

        t_emb = self.t_embedder(timestep.expand(batch) if timestep.numel() == 1 else timestep, dtype)  # (B, D)
        if cfg.micro_conditions:
            if c_size is None:
                c_size = torch.tensor([[height * 8.0, width * 8.0]], device=x.device).expand(batch, 2)
            if c_ar is None:
                c_ar = (c_size[:, 0] / c_size[:, 1])[:, None]
            t_emb = t_emb + torch.cat([self.csize_embedder(c_size.to(x.device), dtype),
                                       self.ar_embedder(c_ar.to(x.device), dtype)], dim=1)
        t_mod = self.t_block(t_emb)  # (B, 6*D)

        if caption is None:
            caption = self.encode_caption(context, context_mask, dtype)
        elif caption.batch != batch:
            raise ValueError(f"The encoded caption has batch {caption.batch}, the latent {batch}.")

        branches = [self._control_branch(item, (batch, height, width), (pad_h, pad_w), pos_embed, context, context_mask)
                    for item in control or ()]
        for index, (block, (key, value)) in enumerate(zip(self.blocks, caption.kv)):
            if index > 0 and branches:
                copy_compress = compress if compress is not None and compress.applies_to(index - 1) else None
                residuals = [branch.residual(index - 1, tokens, t_mod, grid, attention, copy_compress)
                             for branch in branches]  # each (B, N, D) or None
                for residual in residuals:
                    if residual is not None:
                        tokens = tokens + residual
            layer_compress = compress if compress is not None and compress.applies_to(index) else None
            patches = block_patches(index) if block_patches is not None else None
            if patches is not None and patches.replace is not None:
                run = partial(block, key=key, value=value, context_bias=caption.bias, t_mod=t_mod, grid=grid,
                              attention=attention, compress=layer_compress, patches=patches)
                tokens = patches.replace(tokens, run, t_mod, (key, value, caption.bias))
            else:
                tokens = block(tokens, key, value, caption.bias, t_mod, grid, attention, layer_compress, patches)

        out = self.final_layer(tokens, t_emb)  # (B, N, p*p*C_out)
        return self.unpatchify(out, grid)[:, :, :height, :width]

    def _control_branch(self, control: ControlInput, shape: tuple[int, int, int], pad: tuple[int, int],
                        pos_embed: torch.Tensor, context: torch.Tensor | None,
                        context_mask: torch.Tensor | None) -> ControlBranch:
        """Embed a hint latent as the latent is embedded (patches + the same positions) and set up its branch."""
        hint = control.hint
        if hint.shape[0] not in (1, shape[0]) or tuple(hint.shape[-2:]) != shape[1:]:
            raise ValueError(f"The ControlNet hint latent is {tuple(hint.shape)}, the latent (batch, height, width) "
                             f"{shape}: they need the same size (ComfyUI's ControlNet apply nodes resize the hint).")
        reason = control.net.check_base(self.config)
        if reason is not None:
            raise ValueError(f"This ControlNet does not fit the model: {reason}.")
        hint = hint.to(pos_embed.dtype).expand(shape[0], -1, -1, -1)  # (B, C, H, W)
        if pad[0] or pad[1]:
            hint = F.pad(hint, (0, pad[1], 0, pad[0]), mode="replicate")
        hint_tokens = self.x_embedder(hint) + pos_embed  # (B, N, D)
        caption = control.caption
        if caption is None:
            if context is None:
                raise ValueError("A ControlInput without an encoded caption needs the context.")
            caption = control.net.encode_caption(self.y_embedder, context, context_mask, pos_embed.dtype)
        return ControlBranch(control, hint_tokens, caption)

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
            raise ValueError("This PixArt checkpoint carries no learned null caption (y_embedding), so the negative "
                             "prompt cannot be left empty: connect one, e.g. PixArt Text Encode with empty text.")
        return self.y_embedder.y_embedding[None].expand(batch, -1, -1)
