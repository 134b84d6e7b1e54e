"""Quantized weight files in the layouts ComfyUI reads, written from the published formats (ComfyUI's QUANTIZATION.md
and the legacy scaled-fp8 text encoders), with per-tensor absmax scaling: weight = stored.float() * scale.

Their dequantized fp32 twins are not made here: the tests read the written file back and dequantize it themselves
(tests/host/test_host_loading.py), so a mistake in writing cannot hide in both.
"""
from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}
FORMATS = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}

T5_LINEARS = ("SelfAttention.q.weight", "SelfAttention.k.weight", "SelfAttention.v.weight", "SelfAttention.o.weight",
              "DenseReluDense.wi_0.weight", "DenseReluDense.wi_1.weight", "DenseReluDense.wo.weight")
DIT_BLOCK_LINEARS = ("attn.qkv.weight", "attn.proj.weight", "cross_attn.q_linear.weight", "cross_attn.kv_linear.weight",
                     "cross_attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight")
# Every Linear of the DiT: legacy scaled-fp8 hosts build all Linear layers in fp8, so a legacy file scales them all.
DIT_ALL_LINEARS = DIT_BLOCK_LINEARS + ("t_embedder.mlp.0.weight", "t_embedder.mlp.2.weight", "t_block.1.weight",
                                       "y_proj.fc1.weight", "y_proj.fc2.weight", "final_layer.linear.weight")


def linear_layers(state_dict: dict[str, torch.Tensor], suffixes: tuple[str, ...]) -> list[str]:
    """Layer names (without '.weight') of the Linear weights to quantize."""
    return sorted(k[: -len(".weight")] for k in state_dict if k.endswith(suffixes))


def _quantize(weight: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    scale = weight.abs().max().float() / FP8_MAX[dtype]
    return (weight.float() / scale).to(dtype), scale.reshape(())


def legacy_scaled_fp8(state_dict: dict[str, torch.Tensor], layers: list[str]) -> dict[str, torch.Tensor]:
    """File tensors: fp8 weights, '.scale_weight' per layer and the 'scaled_fp8' marker. Legacy hosts build each
    scaled Linear wholly in fp8, bias included, so the file holds biases in fp8 too."""
    stored = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn), **state_dict}
    for layer in layers:
        stored[f"{layer}.weight"], stored[f"{layer}.scale_weight"] = _quantize(state_dict[f"{layer}.weight"],
                                                                               torch.float8_e4m3fn)
        if f"{layer}.bias" in state_dict:
            stored[f"{layer}.bias"] = state_dict[f"{layer}.bias"].to(torch.float8_e4m3fn)
    return stored


def mixed_precision(state_dict: dict[str, torch.Tensor], layers: list[str], fmt: str = "float8_e4m3fn",
                    in_header: bool = True):
    """(file tensors, header metadata) in ComfyUI's mixed-precision format: '.weight_scale' per layer and the layer
    formats either in the safetensors header (`_quantization_metadata`) or as per-layer '.comfy_quant' tensors."""
    dtype = FORMATS[fmt]
    stored = dict(state_dict)
    for layer in layers:
        stored[f"{layer}.weight"], stored[f"{layer}.weight_scale"] = _quantize(state_dict[f"{layer}.weight"], dtype)
        if not in_header:
            stored[f"{layer}.comfy_quant"] = torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)
    header = {"_quantization_metadata": json.dumps(
        {"format_version": "1.0", "layers": {layer: {"format": fmt} for layer in layers}})} if in_header else None
    return stored, header


def save(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None) -> str:
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=metadata)
    return path
