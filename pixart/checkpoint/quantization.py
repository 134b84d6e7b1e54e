"""Quantized weight files as ComfyUI writes them, recognised by their keys and header.

The engine does not dequantize: the host's casting ops read these files. The engine only needs to know that a
file is quantized, keep each layer's extra tensors beside its weight, and say clearly what it cannot convert.

Two layouts of ComfyUI's exist, and GGUF (llama.cpp's block quants, read by pixart.checkpoint.gguf_file; the pack's
own ops dequantize them):
- legacy scaled fp8 (e.g. t5xxl_fp8_e4m3fn_scaled.safetensors): a `scaled_fp8` marker tensor, fp8 weights and a
  per-layer `.scale_weight` (optionally `.scale_input`);
- mixed precision (ComfyUI's QUANTIZATION.md): a `_quantization_metadata` JSON entry in the safetensors header
  naming each quantized layer's format, or per-layer `.comfy_quant` tensors, with `.weight_scale` (+ format
  specific `.weight_scale_2`, `.input_scale`, `.pre_quant_scale`).
"""
from __future__ import annotations

import torch

from .gguf_file import GGUF_TYPE_SUFFIX

LEGACY_SCALED_FP8 = "legacy scaled fp8"
MIXED_PRECISION = "mixed precision"
GGUF = "gguf"

LEGACY_MARKER = "scaled_fp8"
METADATA_KEY = "_quantization_metadata"
_LAYER_SUFFIXES = (".scale_weight", ".scale_input", ".comfy_quant", ".weight_scale", ".weight_scale_2",
                   ".input_scale", ".pre_quant_scale", GGUF_TYPE_SUFFIX)


def is_quantization_key(key: str) -> bool:
    """A marker or per-layer quantization tensor (not a weight of the model itself)."""
    return key == LEGACY_MARKER or key.endswith("." + LEGACY_MARKER) or key.endswith(_LAYER_SUFFIXES)


def quantization_layout(state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str | None:
    """LEGACY_SCALED_FP8, MIXED_PRECISION, GGUF or None for a plain file."""
    if any(k.endswith(GGUF_TYPE_SUFFIX) for k in state_dict):
        return GGUF
    if metadata and METADATA_KEY in metadata:
        return MIXED_PRECISION
    keys = list(state_dict)
    if any(k.endswith(".comfy_quant") for k in keys):
        return MIXED_PRECISION
    if any(k == LEGACY_MARKER or k.endswith("." + LEGACY_MARKER) for k in keys):
        return LEGACY_SCALED_FP8
    return None
