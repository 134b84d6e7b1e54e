"""Perturbed-Attention Guidance (Ahn et al. 2024, arXiv:2403.17377) as diffusers' PixArtSigmaPAGPipeline runs it.

A third prediction of the positive prompt is made with the self-attention of chosen blocks replaced by the identity
(each token attends only to itself: the attention output is its own value); the guided prediction moves away from it:
    eps = eps_uncond + cfg * (eps_cond - eps_uncond) + s_t * (eps_cond - eps_perturbed),
    s_t = max(pag_scale - pag_adaptive_scale * (1000 - t), 0)
(without classifier-free guidance: eps_cond + s_t * (eps_cond - eps_perturbed)). The blocks are chosen as diffusers
chooses them: each pattern of `pag_applied_layers` is a regular expression searched in the names of the
self-attention modules, `transformer_blocks.N.attn1`; its default "blocks.1" so matches block 1 and blocks 10-19.
"""
from __future__ import annotations

import re

import torch

DEFAULT_LAYERS = "blocks.1"  # PixArtSigmaPAGPipeline's pag_applied_layers
DEFAULT_SCALE = 3.0
DEFAULT_ADAPTIVE_SCALE = 0.0
TRAIN_STEPS = 1000


class PAGLayersError(ValueError):
    """A layer pattern that selects no block or is not a regular expression; the message names it and the fix."""


def self_attention_name(index: int) -> str:
    """diffusers' name of block `index`'s self-attention in PixArtTransformer2DModel."""
    return f"transformer_blocks.{index}.attn1"


def split_patterns(text: str) -> list[str]:
    """'blocks.1, blocks.(14|15)' -> ['blocks.1', 'blocks.(14|15)']: commas separate patterns, except inside {m,n}."""
    return [part.strip() for part in re.split(r",(?![^{]*\})", text) if part.strip()]


def pag_layers(text: str, depth: int) -> list[int]:
    """The blocks whose self-attention PAG perturbs: every block whose diffusers self-attention name one of the
    patterns matches (re.search), as PixArtSigmaPAGPipeline.set_pag_applied_layers selects them."""
    patterns = split_patterns(text)
    if not patterns:
        raise PAGLayersError(f"PAG layers '{text}': name at least one layer, e.g. '{DEFAULT_LAYERS}' (diffusers' default) "
                             "or 'blocks.14'.")
    chosen: set[int] = set()
    for pattern in patterns:
        try:
            expression = re.compile(pattern)
        except re.error as err:
            raise PAGLayersError(f"PAG layers: '{pattern}' is not a regular expression ({err}); write patterns like "
                                 "'blocks.14' or 'blocks.(1|2)'.") from err
        found = {index for index in range(depth) if expression.search(self_attention_name(index))}
        if not found:
            raise PAGLayersError(f"PAG layers: '{pattern}' matches no block of this model (names "
                                 f"{self_attention_name(0)} to {self_attention_name(depth - 1)}).")
        chosen |= found
    return sorted(chosen)


def pag_scale_at(timestep: float, scale: float, adaptive_scale: float) -> float:
    """The PAG scale at an integer-valued timestep t in [0, 1000): constant, or decaying linearly towards t = 0."""
    if adaptive_scale == 0:
        return scale
    return max(scale - adaptive_scale * (TRAIN_STEPS - timestep), 0.0)


def identity_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None) -> torch.Tensor:
    """Self-attention whose weights are the identity: every token's output is its own value. (B, N, D) -> (B, N, D)."""
    return v


def describe_layers(layers: list[int]) -> str:
    """[1, 10, 11, 12] -> '1, 10-12'."""
    runs: list[list[int]] = []
    for index in layers:
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)
