"""GGUF files (llama.cpp's format, as the published T5-v1.1-XXL encoder GGUFs are written), read into tensors.

Unquantized tensors (F32, F16, BF16) become ordinary tensors. A quantized tensor stays quantized: its bytes as a
uint8 tensor (rows, bytes per row) under the weight's name, and its ggml type as a one-element tensor under
`<module>.gguf_type` beside it, so the layer that loads it knows how to dequantize it at run time
(pixart.checkpoint.gguf_quants). Reading needs the optional `gguf` package (PyPI).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .errors import CheckpointError
from .gguf_quants import QUANT_TYPES, logical_shape, quant_name

GGUF_EXT = (".gguf",)
GGUF_TYPE_SUFFIX = ".gguf_type"
ARCHITECTURE_FIELD = "general.architecture"
_PLAIN = {0: torch.float32, 1: torch.float16, 30: torch.bfloat16}  # ggml F32, F16, BF16


def require_gguf():
    """The gguf package, or an error naming it and the command that installs it."""
    try:
        import gguf
    except ImportError as err:
        raise CheckpointError("GGUF files need the 'gguf' package, which is not installed in ComfyUI's Python. "
                              "Install it with: python -m pip install gguf   (then restart ComfyUI).") from err
    return gguf


def gguf_type_key(weight_key: str) -> str:
    """`<module>.weight` -> `<module>.gguf_type`."""
    return weight_key.rsplit(".", 1)[0] + GGUF_TYPE_SUFFIX


def tensor_shape(state_dict: dict[str, torch.Tensor], key: str) -> tuple[int, ...]:
    """The shape a tensor has as weights (quantized tensors: values per row, not bytes)."""
    tensor = state_dict[key]
    type_key = gguf_type_key(key)
    if key.endswith(".weight") and type_key in state_dict:
        return logical_shape(tuple(tensor.shape), int(state_dict[type_key]))
    return tuple(tensor.shape)


def read_gguf(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """-> (tensors under the file's own names, {"general.architecture": ...}); every failure a CheckpointError
    naming the file."""
    gguf = require_gguf()
    name = os.path.basename(path)
    size = os.path.getsize(path)
    try:
        reader = gguf.GGUFReader(path)
    except ValueError as err:
        if "GGMLQuantizationType" in str(err):
            raise CheckpointError(
                f"{name} holds a tensor of a quantization type the installed gguf package does not know ({err}). "
                "Update it (python -m pip install -U gguf) or use another quant of the model.") from err
        raise _unreadable(name, size, err) from err
    except (OSError, IndexError, KeyError, TypeError) as err:
        raise _unreadable(name, size, err) from err
    field = reader.get_field(ARCHITECTURE_FIELD)
    architecture = field.contents() if field is not None else ""
    tensors: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        qtype = int(tensor.tensor_type)
        data = np.array(tensor.data)  # a copy in memory; the file is not kept open
        if qtype in _PLAIN:
            values = torch.from_numpy(data)
            tensors[tensor.name] = values.view(torch.bfloat16) if qtype == 30 else values
            continue
        _require_dequantizer(gguf, qtype, name, tensor.name)
        tensors[tensor.name] = torch.from_numpy(data.view(np.uint8))
        tensors[gguf_type_key(tensor.name)] = torch.tensor([qtype], dtype=torch.int32)
    return tensors, {ARCHITECTURE_FIELD: architecture}


def _unreadable(name: str, size: int, err: Exception) -> CheckpointError:
    return CheckpointError(f"{name} ({size:,} bytes) is not a readable GGUF file ({type(err).__name__}: {err}). It is "
                           "probably truncated or corrupt: download it again and compare its size with the published one.")


def _require_dequantizer(gguf, qtype: int, name: str, tensor_name: str) -> None:
    if qtype in QUANT_TYPES:
        return
    _, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(qtype)]
    try:
        gguf.quants.dequantize(np.zeros((1, type_size), dtype=np.uint8), gguf.GGMLQuantizationType(qtype))
    except NotImplementedError as err:
        raise CheckpointError(
            f"{name}: tensor {tensor_name} is {quant_name(qtype)}, which the installed gguf package cannot "
            "dequantize. Update it (python -m pip install -U gguf) or use another quant (Q8_0, Q6_K, Q5_K_M, "
            "Q4_K_M, ...).") from err
