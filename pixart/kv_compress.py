"""KV token compression for self-attention (PixArt-Σ, Chen et al., 2024, arXiv:2403.04692, Sec. 3.2).

In chosen layers the keys and values of self-attention are spatially downsampled by s x s;
queries keep full length, so the output shape is unchanged and attention costs N * N/s² instead of N².
Modes:
  avg      s x s mean of the tokens in each window (training-free; the official averaging-initialised conv before
           its LayerNorm).
  nearest  the official code's "ave": nearest-neighbour downsampling by 1/s, i.e. every s-th token along each axis.
  uniform  the official code's "uniform": every s-th token along each axis (strided slice); the same tokens as nearest.
  conv     depthwise s x s conv + LayerNorm, only with trained `attn.sr` / `attn.norm` weights.
Reference: AttentionKVCompress.downsample_2d in the official PixArt-sigma code (diffusion/model/nets/PixArt_blocks.py).
Sides that are not multiples of s give ceil(H/s) x ceil(W/s) tokens where the official code keeps floor(H/s) x
floor(W/s) (or fails: its uniform reshape): the tokens both keep are the official ones, plus an edge row/column here,
where avg averages the tokens the edge window holds and conv sees edge tokens repeated (replicate padding).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MODES = ("avg", "nearest", "uniform", "conv")
RATIOS = (2, 3, 4)


class KVCompressError(ValueError):
    """A KV compression setting that cannot be applied; the message names the setting and the fix."""


@dataclass(frozen=True)
class KVCompress:
    """Per-run KV compression setting; pass it to the DiT's forward, no rebuild needed."""

    ratio: int
    layers: frozenset[int]
    mode: str = "avg"

    def __post_init__(self):
        if self.mode not in MODES:
            raise KVCompressError(f"KV compression mode '{self.mode}' is unknown; use one of {', '.join(MODES)}.")
        if self.ratio < 1:
            raise KVCompressError(f"KV compression ratio {self.ratio} must be 1 (off) or more.")

    def applies_to(self, layer: int) -> bool:
        return self.ratio > 1 and layer in self.layers


def default_layers(depth: int) -> frozenset[int]:
    """The deep half of the blocks (14-27 of 28), the placement the paper found best."""
    return frozenset(range(depth // 2, depth))


def parse_layers(text: str, depth: int) -> frozenset[int]:
    """Parse '14-27', '0,2,4-6', 'all' or '' / 'default' (the deep half) into block indices.

    Raises KVCompressError naming the bad part and the valid range.
    """
    text = text.strip().lower()
    if text in ("", "default", "deep"):
        return default_layers(depth)
    if text == "all":
        return frozenset(range(depth))
    layers: set[int] = set()
    for part in re.split(r"[,\s]+", text):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None:
            raise KVCompressError(
                f"KV layers '{text}': cannot read '{part}'. Write block indices and ranges like '14-27' or "
                f"'0,4,8-11' (0 to {depth - 1}), 'all', or leave empty for the deep half."
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else first
        if first > last:
            raise KVCompressError(f"KV layers '{part}': the range runs backwards; write '{last}-{first}'.")
        if last >= depth:
            raise KVCompressError(
                f"KV layers '{part}': this model has {depth} blocks, numbered 0 to {depth - 1}."
            )
        layers.update(range(first, last + 1))
    return frozenset(layers)


def compressed_grid(height: int, width: int, ratio: int) -> tuple[int, int]:
    """Token grid after compression: ceil on both sides."""
    return -(-height // ratio), -(-width // ratio)


def compress_tokens(tokens: torch.Tensor, grid: tuple[int, int], ratio: int, mode: str,
                    conv=None, norm=None) -> torch.Tensor:
    """Downsample a token sequence laid out on a grid. (B, H*W, C) -> (B, ceil(H/s)*ceil(W/s), C)."""
    batch, _, channels = tokens.shape
    height, width = grid
    out_h, out_w = compressed_grid(height, width, ratio)
    if mode in ("avg", "nearest", "uniform") and height % ratio == 0 and width % ratio == 0:
        # Fast path on the token layout itself: no transposes, works on strided q/k/v views.
        windows = tokens.unflatten(1, (out_h, ratio, out_w, ratio))  # (B, H', s, W', s, C) view
        # nearest onto a grid s times coarser picks each window's top-left token, like uniform
        out = windows.mean(dim=(2, 4)) if mode == "avg" else windows[:, :, 0, :, 0]
        return out.reshape(batch, out_h * out_w, channels)
    image = tokens.transpose(1, 2).reshape(batch, channels, height, width)  # (B, C, H, W)
    if mode == "avg":
        # With ceil_mode and no padding each edge window divides by the tokens it actually holds.
        image = F.avg_pool2d(image, ratio, ratio, ceil_mode=True)
    elif mode in ("nearest", "uniform"):
        image = image[:, :, ::ratio, ::ratio]
    elif mode == "conv":
        if conv is None or norm is None:
            raise KVCompressError("KV mode 'conv' needs trained attn.sr / attn.norm weights in this layer.")
        pad_h, pad_w = out_h * ratio - height, out_w * ratio - width
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")
        image = conv(image)
    else:
        raise KVCompressError(f"KV compression mode '{mode}' is unknown; use one of {', '.join(MODES)}.")
    out = image.reshape(batch, channels, out_h * out_w).transpose(1, 2)  # (B, N', C)
    if mode == "conv":
        out = norm(out)
    return out


def compressed_steps(fraction: float, steps: int) -> int:
    """How many steps, from the first, run compressed: kv_steps of the steps run, rounded up (any fraction above 0
    compresses at least one step)."""
    if fraction >= 1.0:
        return steps
    if fraction <= 0.0:
        return 0
    return min(steps, math.ceil(fraction * steps - 1e-9))


def in_compressed_steps(level: float, run_levels: list[float], fraction: float) -> bool:
    """Whether a model call at noise level `level` falls within the compressed steps of a run whose steps go from
    run_levels[i] to run_levels[i + 1] (decreasing). A call belongs to the step it starts or lies inside, so the
    intermediate calls of multistage samplers count with their step."""
    steps = len(run_levels) - 1
    count = compressed_steps(fraction, steps)
    if count >= steps:
        return True
    if count == 0:
        return False
    boundary = run_levels[count]  # the level where the first uncompressed step starts
    return level > boundary and not math.isclose(level, boundary, rel_tol=1e-4, abs_tol=1e-7)
