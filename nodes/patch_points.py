"""ComfyUI's model patch points, answered by the PixArt DiT as core's own DiTs answer them.

Core nodes patch a model by writing into transformer_options (ModelPatcher.set_model_*); a DiT reads them while it
runs. PixArt block i answers:
- patches_replace["dit"][("double_block", i)]: replaces the block, called with ({"img": tokens, "txt": (keys,
  values) of the caption, "vec": the block's modulation input, "transformer_options": ...}, {"original_block": f})
  and returning {"img": tokens}; the key single-stream DiTs (Wan) use, so SkipLayerGuidanceDiT(Simple)'s
  `double_layers` name PixArt blocks;
- patches_replace["attn1"] / ["attn2"][("double_block", i)]: replaces the self- / cross-attention, called as
  f(q, k, v, extra_options) with the projected queries, keys and values (self-attention: before KV compression,
  which belongs to the attention it replaces; cross-attention: extra_options["attention_mask"] holds the caption's
  padding bias) and returning the attention output before the output projection;
- patches["attn1_output_patch"] / ["attn2_output_patch"]: f(out, extra_options) on the attention output before the
  output projection, as core's DiTs (Flux) apply them (NAGuidance);
- transformer_options["optimized_attention_override"]: honoured by ComfyUI's attention functions themselves.
extra_options is transformer_options without its patch dicts, plus block (("double_block", i)), block_index,
block_type ("double"), total_blocks, n_heads and dim_head. Input patches (attn1_patch, attn2_patch) follow UNet
conventions (HyperTile, ToMe, hypernetworks) that do not fit PixArt's attention: a MODEL carrying them is an error
naming them, not an image they silently left unchanged.
"""
from __future__ import annotations

from ..pixart.patches import AttentionPatch, BlockPatches

DIT_BLOCK = "double_block"  # core's key for the blocks of single-stream DiTs
UNSUPPORTED_PATCHES = {"attn1_patch": "self-attention input", "attn2_patch": "cross-attention input"}


class UnsupportedPatchError(ValueError):
    """A core patch the PixArt DiT cannot honour; the message names it and the nodes that set it."""


def check_supported(options: dict) -> None:
    found = [name for name in UNSUPPORTED_PATCHES if (options.get("patches") or {}).get(name)]
    if found:
        kinds = ", ".join(f"{name} ({UNSUPPORTED_PATCHES[name]})" for name in found)
        raise UnsupportedPatchError(
            f"This MODEL carries {kinds} patches, made for UNet models (e.g. by HyperTile, Tome Patch Model or a "
            "hypernetwork), which the PixArt DiT cannot apply. Remove that node between the loader and the sampler.")


def _extra_options(options: dict, index: int, depth: int, heads: int, head_dim: int) -> dict:
    extra = {key: value for key, value in options.items() if key not in ("patches", "patches_replace")}
    extra.update(block=(DIT_BLOCK, index), block_index=index, block_type="double", total_blocks=depth,
                 n_heads=heads, dim_head=head_dim)
    return extra


def _attention_patch(replace, outputs: list, extra: dict, with_mask: bool) -> AttentionPatch | None:
    if replace is None and not outputs:
        return None

    def replaced(q, k, v, mask):
        return replace(q, k, v, {**extra, "attention_mask": mask} if with_mask else extra)

    return AttentionPatch(replace=replaced if replace is not None else None,
                          after=tuple(lambda out, patch=patch: patch(out, extra) for patch in outputs))


def _block_replace(patch, extra: dict):
    def replaced(tokens, run, t_mod, caption):
        args = {"img": tokens, "txt": caption[:2], "vec": t_mod, "transformer_options": extra}
        return patch(args, {"original_block": lambda block_args: {"img": run(block_args["img"])}})["img"]

    return replaced


def block_patches_for(options: dict, attention_for_options, depth: int, heads: int, head_dim: int):
    """index -> BlockPatches of that block from transformer_options; attention_for_options(extra_options) is the
    attention function the block calls (ComfyUI's, given the block's options for its override)."""
    check_supported(options)
    patches = options.get("patches") or {}
    replaces = options.get("patches_replace") or {}
    self_outputs = list(patches.get("attn1_output_patch") or ())
    cross_outputs = list(patches.get("attn2_output_patch") or ())

    def block_patches(index: int) -> BlockPatches:
        key = (DIT_BLOCK, index)
        extra = _extra_options(options, index, depth, heads, head_dim)
        block = (replaces.get("dit") or {}).get(key)
        return BlockPatches(
            attention=attention_for_options(extra),
            self_attention=_attention_patch((replaces.get("attn1") or {}).get(key), self_outputs, extra, False),
            cross_attention=_attention_patch((replaces.get("attn2") or {}).get(key), cross_outputs, extra, True),
            replace=None if block is None else _block_replace(block, extra),
        )

    return block_patches
