"""Which of ComfyUI's attention functions the PixArt DiT calls.

ComfyUI's own choice (`optimized_attention`: flash, sage, xformers or torch SDPA on NVIDIA, per its command-line
flags) is kept everywhere but one place: on the CPU, ComfyUI falls back to its sub-quadratic attention unless
told otherwise, and torch's fused SDPA CPU kernel runs PixArt's head-dim-72 self-attention about 3x faster
(0.34x the time at 4096 tokens, bench/attention_cpu.py), also without building the N x N scores. There we call
ComfyUI's registered "pytorch" attention instead, which still honours transformer_options' attention overrides.
A user who asked for sub-quadratic or split attention explicitly keeps it.
"""
from __future__ import annotations

import logging

import comfy.ldm.modules.attention as comfy_attention
import torch
from comfy.cli_args import args

log = logging.getLogger(__name__)

_logged = set()


def _user_chose_attention() -> bool:
    return bool(args.use_split_cross_attention or args.use_quad_cross_attention)


def attention_for(device: torch.device):
    """ComfyUI's attention function to use for tensors on `device`."""
    chosen = comfy_attention.optimized_attention
    if device.type == "cpu" and chosen is comfy_attention.attention_sub_quad and not _user_chose_attention():
        registry = getattr(comfy_attention, "get_attention_function", None)  # ComfyUI before 0.3.60 has none
        sdpa = registry("pytorch", None) if registry else getattr(comfy_attention, "attention_pytorch", None)
        if sdpa is not None:
            if "cpu" not in _logged:
                _logged.add("cpu")
                log.info("PixArt on CPU: using ComfyUI's pytorch (SDPA) attention instead of sub-quadratic attention, "
                         "which is slower for PixArt's shapes; --use-quad-cross-attention keeps sub-quadratic.")
            return sdpa
    return chosen
