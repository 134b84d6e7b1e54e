"""Layers that keep GGUF-quantized weights quantized and dequantize them when they run (the T5 loader's operations
for a quantized .gguf file, handed to ComfyUI's T5 as `custom_operations`).

A quantized weight arrives as its bytes (uint8, rows x bytes per row) with `<module>.gguf_type` beside it
(pixart.checkpoint.gguf_file). The layer keeps the bytes as its parameter, so ComfyUI's model management moves and
measures the quantized size (lowvram and offloading included), and dequantizes on the input's device at each call.
Weights without a ggml type (norms, F16/F32 tensors) load and run as in ComfyUI's manual-cast ops.
"""
from __future__ import annotations

import comfy.ops
import torch

from ..pixart.checkpoint.gguf_file import gguf_type_key
from ..pixart.checkpoint.gguf_quants import dequantize


class _QuantizedWeight:
    """The loading and dequantizing shared by the quantized Linear and Embedding."""

    gguf_type: int | None = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if not self._load_quantized(state_dict, prefix, missing_keys):
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                          error_msgs)

    def _load_quantized(self, state_dict, prefix, missing_keys) -> bool:
        """Take `prefix`weight as quantized bytes when a ggml type comes with it; False for a plain weight."""
        qtype = state_dict.pop(gguf_type_key(prefix + "weight"), None)
        if qtype is None:
            return False
        raw = state_dict.pop(prefix + "weight", None)
        if raw is None:
            missing_keys.append(prefix + "weight")
            return True
        self.gguf_type = int(qtype)
        self.weight = torch.nn.Parameter(raw, requires_grad=False)
        self.weight_comfy_model_dtype = raw.dtype  # what the host restores when it moves the layer
        if prefix + "bias" in state_dict:
            self.bias = torch.nn.Parameter(state_dict.pop(prefix + "bias"), requires_grad=False)
        return True


class GGUFOps(comfy.ops.manual_cast):
    class Linear(_QuantizedWeight, comfy.ops.manual_cast.Linear):
        def forward(self, input, *args, **kwargs):
            if self.gguf_type is None:
                return super().forward(input, *args, **kwargs)
            # (out, in) values from the bytes, on the input's device (the bytes stay where ComfyUI keeps them)
            weight = dequantize(self.weight.to(input.device, non_blocking=True), self.gguf_type, input.dtype)
            for function in self.weight_function:  # patches ComfyUI applies at run time (lowvram LoRA)
                weight = function(weight)
            bias = None if self.bias is None else self.bias.to(input.device, input.dtype)
            return torch.nn.functional.linear(input, weight, bias)

    class Embedding(_QuantizedWeight, comfy.ops.manual_cast.Embedding):
        def forward(self, input, out_dtype=None):
            if self.gguf_type is None:
                return super().forward(input, out_dtype=out_dtype)
            # only the looked-up rows are dequantized: (tokens, bytes per row) -> (*input.shape, embedding dim)
            rows = self.weight.index_select(0, input.reshape(-1).to(self.weight.device)).to(input.device)
            values = dequantize(rows, self.gguf_type, out_dtype or torch.float32)
            return values.reshape(*input.shape, values.shape[-1])
