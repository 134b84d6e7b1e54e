"""Encode each caption once per sampling run instead of at every step.

The caption projection and every block's cross-attention K/V depend on the caption and the weights alone, so
within one sampling run they are the same at every step. An OUTER_SAMPLE wrapper, installed on every PixArt
ModelPatcher, gives each run its own CaptionCache in transformer_options; the model looks captions up there by
the uuids of the conds ComfyUI batched into the call. The cache lives and dies with the run, so a LoRA or other
weight patch applied between runs is always seen.

The cache is left out for runs whose weights or conditioning can change between steps: conds carrying hooks
(scheduled LoRA keyframes), a patcher with hook patches, and a model_function_wrapper (which may rewrite the
conditioning it passes on).
"""
from __future__ import annotations

import logging
from collections import OrderedDict

import torch

from ..pixart.dit import PixArtDiT
from ..pixart.encoded_caption import EncodedCaption

log = logging.getLogger(__name__)

CAPTION_CACHE_OPTION = "pixart_caption_cache"  # transformer_options key holding the run's CaptionCache
WRAPPER_KEY = "pixart_caption_cache"


class CaptionCache:
    """Encoded captions of one sampling run, keyed by which conds are batched and how."""

    def __init__(self, limit: int = 8):
        self.limit = limit  # distinct cond batches kept (cond, uncond, both, area conds...)
        self.entries: OrderedDict[tuple, EncodedCaption] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def encode(self, dit: PixArtDiT, key: tuple, context: torch.Tensor, context_mask: torch.Tensor | None,
               dtype: torch.dtype) -> EncodedCaption:
        caption = self.entries.get(key)
        if caption is not None:
            self.hits += 1
            self.entries.move_to_end(key)
            return caption
        self.misses += 1
        caption = dit.encode_caption(context, context_mask, dtype)
        self.entries[key] = caption
        if len(self.entries) > self.limit:
            self.entries.popitem(last=False)
        return caption


def weights_state(dit: PixArtDiT) -> tuple:
    """The tensors the caption encoding reads, with their in-place versions and ComfyUI's on-the-fly patch lists.

    It changes when weights are swapped mid-run (a custom guider driving two patchers of one model, say) or patched
    in place (where torch tracks versions: not for tensors created under inference_mode, as ComfyUI loads them), so
    the cache does not serve keys and values computed from other weights.
    """
    modules = [*dit.y_embedder.modules(), *(block.cross_attn.kv_linear for block in dit.blocks)]
    state = [id(dit)]
    for module in modules:
        for name in ("weight", "bias"):
            tensor = getattr(module, name, None)
            if isinstance(tensor, torch.Tensor):  # inference tensors (loaded under inference_mode) have no version
                version = None if tensor.is_inference() else tensor._version
                state.append((id(tensor), tensor.data_ptr(), version))
        for name in ("weight_function", "bias_function"):  # comfy.ops: LoRA applied while casting (lowvram)
            functions = getattr(module, name, None)
            if functions:
                state.append(tuple(id(function) for function in functions))
    return tuple(state)


def cache_key(dit: PixArtDiT, options: dict, context: torch.Tensor, context_mask: torch.Tensor | None,
              dtype: torch.dtype):
    """The conds in this call, in batch order, the tensors' shapes and the weights' state; None without uuids."""
    uuids = options.get("uuids")
    if not uuids:
        return None
    mask_shape = None if context_mask is None else tuple(context_mask.shape)
    return (tuple(uuids), tuple(options.get("cond_or_uncond") or ()), tuple(context.shape), mask_shape,
            context.device, dtype, weights_state(dit))


def encode_caption(dit: PixArtDiT, options: dict, context: torch.Tensor, context_mask: torch.Tensor | None,
                   dtype: torch.dtype) -> EncodedCaption:
    """The run's cached encoding of this context when there is a cache, else a fresh one."""
    cache = options.get(CAPTION_CACHE_OPTION)
    key = cache_key(dit, options, context, context_mask, dtype) if cache is not None else None
    if key is None:
        return dit.encode_caption(context, context_mask, dtype)
    return cache.encode(dit, key, context, context_mask, dtype)


def _weights_may_change_between_steps(guider) -> bool:
    patcher = guider.model_patcher
    if getattr(patcher, "hook_patches", None) or getattr(patcher, "forced_hooks", None) is not None:
        return True
    if "model_function_wrapper" in guider.model_options:
        return True
    conds = getattr(guider, "conds", None) or {}
    return any(cond.get("hooks") is not None for entries in conds.values() for cond in entries)


def caption_cache_wrapper(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper: one CaptionCache for this sampling run (guider.model_options is the run's own clone)."""
    guider = executor.class_obj
    if _weights_may_change_between_steps(guider):
        return executor(*args, **kwargs)
    cache = CaptionCache()
    guider.model_options.setdefault("transformer_options", {})[CAPTION_CACHE_OPTION] = cache
    try:
        return executor(*args, **kwargs)
    finally:
        guider.model_options["transformer_options"].pop(CAPTION_CACHE_OPTION, None)
        log.debug("PixArt caption cache: %d encoded, %d reused", cache.misses, cache.hits)


def install(patcher) -> None:
    import comfy.patcher_extension

    patcher.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, caption_cache_wrapper)
