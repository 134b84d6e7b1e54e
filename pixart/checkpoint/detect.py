"""Variant and configuration of a PixArt DiT, read from its weights (and config files when present).

Evidence, strongest first: diffusers config.json / model_index.json; the null-caption rows
(y_embedding: 300 Σ / 120 α); the saved positional-embedding buffer's token count; micro-condition
embedders (α-1024); the file name. Widths, depth and channels always come from tensor shapes.
"""
from __future__ import annotations

import logging
import math
import os
import re

import torch

from ..config import ALPHA, CAPTION_TOKENS, HEAD_DIM, SIGMA, DiTConfig
from .errors import CheckpointError

log = logging.getLogger(__name__)

# Published pe_interpolation per trained latent side.
PE_INTERPOLATION = {
    SIGMA: {32: 0.5, 64: 1.0, 128: 2.0, 256: 4.0},
    ALPHA: {32: 1.0, 64: 1.0, 128: 2.0},
}
_NAME_SIZES = ((r"2k|2048", 256), (r"1024", 128), (r"512", 64), (r"256", 32))


def _count_blocks(state_dict) -> int:
    indices = {int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not indices:
        return 0
    if indices != set(range(max(indices) + 1)):
        raise CheckpointError(f"blocks {sorted(set(range(max(indices) + 1)) - indices)} are missing")
    return len(indices)


def _family(state_dict, config: dict, pipeline_class: str | None, name: str) -> tuple[str, str]:
    null = state_dict.get("y_embedder.y_embedding")
    if null is not None:
        for family, tokens in CAPTION_TOKENS.items():
            if null.shape[0] == tokens:
                return family, f"{tokens} null-caption tokens"
    if pipeline_class:
        if "Sigma" in pipeline_class:
            return SIGMA, pipeline_class
        if "Alpha" in pipeline_class:
            return ALPHA, pipeline_class
    if "csize_embedder.mlp.0.weight" in state_dict:
        return ALPHA, "micro-condition embedders"
    lowered = name.lower()
    if "sigma" in lowered:
        return SIGMA, "file name"
    if "alpha" in lowered:
        return ALPHA, "file name"
    return SIGMA, "no evidence (assumed)"


def _sample_size(state_dict, config: dict, patch: int, micro: bool, name: str) -> tuple[int, str]:
    if config.get("sample_size"):
        return int(config["sample_size"]), "config.json"
    pos = state_dict.get("pos_embed")
    if pos is not None and pos.ndim == 3:
        side = math.isqrt(pos.shape[1])
        if side * side == pos.shape[1]:
            return side * patch, "pos_embed buffer"
    if micro:
        return 128, "micro-conditions (α-1024)"
    lowered = os.path.basename(name).lower()
    for pattern, size in _NAME_SIZES:
        if re.search(pattern, lowered):
            return size, "file name"
    return 128, "no evidence (assumed 1024 px)"


def _pe_interpolation(family: str, sample_size: int, config: dict) -> float:
    if config.get("interpolation_scale") is not None:
        return float(config["interpolation_scale"])
    table = PE_INTERPOLATION[family]
    if sample_size in table:
        return table[sample_size]
    scale = sample_size / 64
    return scale if family == SIGMA else max(scale, 1.0)


def _num_heads(hidden: int, config: dict, source: str) -> int:
    if config.get("num_attention_heads"):
        return int(config["num_attention_heads"])
    if hidden % HEAD_DIM == 0:
        return hidden // HEAD_DIM
    raise CheckpointError(
        f"{source}: hidden width {hidden} is not a multiple of PixArt's head width {HEAD_DIM}, so the head "
        "count cannot be read from the weights. Use a diffusers folder whose config.json names num_attention_heads."
    )


def detect_config(state_dict: dict[str, torch.Tensor], source: str, config: dict | None = None,
                  pipeline_class: str | None = None) -> DiTConfig:
    """Internal-layout state dict -> DiTConfig. Logs which evidence decided the variant."""
    config = config or {}
    try:
        patch_weight = state_dict["x_embedder.proj.weight"]  # (D, C_in, p, p)
        hidden, in_channels, patch = patch_weight.shape[0], patch_weight.shape[1], patch_weight.shape[2]
        depth = _count_blocks(state_dict)
        out_channels = state_dict["final_layer.linear.weight"].shape[0] // (patch * patch)
        mlp_hidden = state_dict["blocks.0.mlp.fc1.weight"].shape[0]
        caption_channels = state_dict["y_embedder.y_proj.fc1.weight"].shape[1]
    except (KeyError, CheckpointError) as err:
        raise CheckpointError(f"{source}: incomplete PixArt checkpoint ({err}); download it again.") from err
    micro = "csize_embedder.mlp.0.weight" in state_dict
    if config.get("use_additional_conditions") is not None and bool(config["use_additional_conditions"]) != micro:
        log.warning("%s: config.json use_additional_conditions=%s disagrees with the weights; following the weights.",
                    source, config["use_additional_conditions"])
    family, family_why = _family(state_dict, config, pipeline_class, source)
    sample_size, size_why = _sample_size(state_dict, config, patch, micro, source)
    null = state_dict.get("y_embedder.y_embedding")
    kv_layers = frozenset(int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.attn\.sr\.weight$", k)))
    kv_ratio = state_dict[f"blocks.{min(kv_layers)}.attn.sr.weight"].shape[-1] if kv_layers else 0
    result = DiTConfig(
        family=family,
        hidden_size=hidden,
        depth=depth,
        num_heads=_num_heads(hidden, config, source),
        patch_size=patch,
        in_channels=in_channels,
        out_channels=out_channels,
        mlp_hidden=mlp_hidden,
        caption_channels=caption_channels,
        caption_tokens=null.shape[0] if null is not None else CAPTION_TOKENS[family],
        sample_size=sample_size,
        pe_interpolation=_pe_interpolation(family, sample_size, config),
        micro_conditions=micro,
        has_null_caption=null is not None,
        qk_norm="blocks.0.attn.q_norm.weight" in state_dict,
        kv_conv_layers=kv_layers,
        kv_conv_ratio=kv_ratio,
    )
    for why in (family_why, size_why):
        if "assumed" in why:
            log.warning("%s: %s; %s", source, why, "rename the file to include e.g. 'Sigma' and '1024' if this is wrong")
    log.info("%s: %s (family from %s, trained size from %s)", source, result.describe(), family_why, size_why)
    return result
