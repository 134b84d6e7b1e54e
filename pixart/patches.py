"""Points where a caller can replace or follow parts of one DiT forward, block by block, without the model knowing who.

A host (ComfyUI, through nodes/patch_points.py) hands PixArtDiT.forward a function `block_patches(index)` that returns
what to do differently in block `index`, or None to run the block as it is:

- `attention`: the attention function this block calls (q, k, v, heads, mask=None) -> (B, Nq, D), e.g. bound to
  per-block options;
- `self_attention` / `cross_attention`: an AttentionPatch for that attention: `replace` computes the attention output
  itself from the projected q, k, v (self-attention: keys and values before KV compression, which belongs to the
  attention it replaces; cross-attention: the caption's keys and values and their padding bias); `after` functions
  transform the attention output in order. Both act on the output before the output projection, heads concatenated;
- `replace`: runs instead of the whole block, given the block's input tokens and a function that runs the block
  as it would have run (with the attention patches above): (tokens, run, t_mod, caption) -> tokens.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# (q, k, v, mask) -> (B, Nq, D); mask: additive bias broadcastable to (B, heads, Nq, Nk), or None
AttentionReplace = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
# (tokens (B, N, D), run_block, t_mod (B, 6*D), caption (key, value, bias) of this block) -> tokens (B, N, D)
BlockReplace = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class AttentionPatch:
    replace: AttentionReplace | None = None
    after: tuple[Callable[[torch.Tensor], torch.Tensor], ...] = ()

    def run(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
            attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]):
        """The attention output (B, Nq, D): `replace` or `attend` on (q, k, v, mask), then each `after`."""
        out = (self.replace or attend)(q, k, v, mask)
        for after in self.after:
            out = after(out)
        return out


@dataclass(frozen=True)
class BlockPatches:
    attention: Callable | None = None
    self_attention: AttentionPatch | None = None
    cross_attention: AttentionPatch | None = None
    replace: BlockReplace | None = None


def attend(patch: AttentionPatch | None, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           attention: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]):
    """`attention(q, k, v, mask)` as the patch has it, or as it is without one."""
    return attention(q, k, v, mask) if patch is None else patch.run(q, k, v, mask, attention)
