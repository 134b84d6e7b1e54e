"""The PixArt transformer block and output layer (PixArt-α arXiv:2310.00426, PixArt-Σ arXiv:2403.04692).

Each block: adaLN-single modulated self-attention (optionally KV-compressed), cross-attention to the
caption tokens, modulated MLP. Module names follow the original checkpoints so weights load as they are.
"""
from __future__ import annotations

import torch
from torch import nn

from .kv_compress import KVCompress, compress_tokens
from .patches import AttentionPatch, BlockPatches, attend


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class SelfAttention(nn.Module):
    """Fused qkv projection; K/V optionally compressed on the token grid. Keys: qkv, proj, [sr, norm, q_norm, k_norm]."""

    def __init__(self, dim: int, heads: int, trained_kv_conv: int, qk_norm: bool, operations, dtype=None, device=None):
        super().__init__()
        self.heads = heads
        self.qkv = operations.Linear(dim, dim * 3, dtype=dtype, device=device)
        self.proj = operations.Linear(dim, dim, dtype=dtype, device=device)
        if trained_kv_conv:
            ratio = trained_kv_conv
            self.sr = operations.Conv2d(dim, dim, kernel_size=ratio, stride=ratio, groups=dim, dtype=dtype, device=device)
            self.norm = operations.LayerNorm(dim, dtype=dtype, device=device)
        else:
            self.sr = self.norm = None
        if qk_norm:
            self.q_norm = operations.LayerNorm(dim, dtype=dtype, device=device)
            self.k_norm = operations.LayerNorm(dim, dtype=dtype, device=device)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: torch.Tensor, grid: tuple[int, int], attention, compress: KVCompress | None,
                patch: AttentionPatch | None = None) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x (B, N, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)

        def compressed_attention(q, k, v, mask):
            if compress is not None:
                k = compress_tokens(k, grid, compress.ratio, compress.mode, self.sr, self.norm)  # (B, N', D)
                v = compress_tokens(v, grid, compress.ratio, compress.mode, self.sr, self.norm)
            return attention(q, k, v, self.heads)

        return self.proj(attend(patch, q, k, v, None, compressed_attention))  # (B, N, D)


class CrossAttention(nn.Module):
    """Queries from the image tokens, keys/values from the caption tokens. Keys: q_linear, kv_linear, proj.

    kv_linear is applied by PixArtDiT.encode_caption, once per caption, not here."""

    def __init__(self, dim: int, heads: int, operations, dtype=None, device=None):
        super().__init__()
        self.heads = heads
        self.q_linear = operations.Linear(dim, dim, dtype=dtype, device=device)
        self.kv_linear = operations.Linear(dim, dim * 2, dtype=dtype, device=device)
        self.proj = operations.Linear(dim, dim, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context_bias: torch.Tensor | None,
                attention, patch: AttentionPatch | None = None) -> torch.Tensor:
        # x (B, N, D); key, value (B, L, D) from kv_linear; context_bias (B, 1, 1, L) additive
        return self.proj(attend(patch, self.q_linear(x), key, value, context_bias,
                                lambda q, k, v, mask: attention(q, k, v, self.heads, mask=mask)))


class Mlp(nn.Module):
    """fc1 -> GELU(tanh) -> fc2: the blocks' feed-forward (dim -> hidden -> dim) and the caption projection
    (T5 width -> hidden -> hidden)."""

    def __init__(self, dim: int, hidden: int, operations, dtype=None, device=None, out_features: int | None = None):
        super().__init__()
        self.fc1 = operations.Linear(dim, hidden, dtype=dtype, device=device)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = operations.Linear(hidden, out_features or dim, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PixArtBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_hidden: int, trained_kv_conv: int, qk_norm: bool,
                 operations, dtype=None, device=None):
        super().__init__()
        self.norm1 = operations.LayerNorm(dim, elementwise_affine=False, eps=1e-6, dtype=dtype, device=device)
        self.attn = SelfAttention(dim, heads, trained_kv_conv, qk_norm, operations, dtype, device)
        self.cross_attn = CrossAttention(dim, heads, operations, dtype, device)
        self.norm2 = operations.LayerNorm(dim, elementwise_affine=False, eps=1e-6, dtype=dtype, device=device)
        self.mlp = Mlp(dim, mlp_hidden, operations, dtype, device)
        self.scale_shift_table = nn.Parameter(torch.empty(6, dim, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context_bias: torch.Tensor | None,
                t_mod: torch.Tensor, grid: tuple[int, int], attention, compress: KVCompress | None,
                patches: BlockPatches | None = None) -> torch.Tensor:
        # x (B, N, D); t_mod (B, 6*D) from t_block; patches: pixart.patches (its replace is the DiT's business)
        self_patch = cross_patch = None
        if patches is not None:
            attention = patches.attention or attention
            self_patch, cross_patch = patches.self_attention, patches.cross_attention
        table = self.scale_shift_table[None].to(dtype=x.dtype, device=x.device)  # (1, 6, D)
        mods = table + t_mod.reshape(x.shape[0], 6, -1)  # (B, 6, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.chunk(6, dim=1)  # 6 x (B, 1, D)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), grid, attention, compress, self_patch)
        x = x + self.cross_attn(x, key, value, context_bias, attention, cross_patch)
        x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """Modulated LayerNorm + linear to patch pixels. Keys: linear, scale_shift_table."""

    def __init__(self, dim: int, patch_size: int, out_channels: int, operations, dtype=None, device=None):
        super().__init__()
        self.norm_final = operations.LayerNorm(dim, elementwise_affine=False, eps=1e-6, dtype=dtype, device=device)
        self.linear = operations.Linear(dim, patch_size * patch_size * out_channels, dtype=dtype, device=device)
        self.scale_shift_table = nn.Parameter(torch.empty(2, dim, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        # x (B, N, D), t_emb (B, D) -> (B, N, p*p*C_out)
        table = self.scale_shift_table[None].to(dtype=x.dtype, device=x.device)  # (1, 2, D)
        shift, scale = (table + t_emb[:, None]).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))
