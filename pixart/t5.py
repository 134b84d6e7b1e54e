"""T5 encoder checkpoints: recognise them and read their configuration from the weights.

Key names are Hugging Face's T5EncoderModel names (ComfyUI's T5 uses the same); any prefix before
`encoder.` (e.g. `text_encoders.t5xxl.transformer.`) is removed. GGUF files use llama.cpp's names (`token_embd`,
`enc.blk.N.attn_q`, `enc.output_norm`, ...), renamed here to Hugging Face's.
"""
from __future__ import annotations

import re

import torch

from .checkpoint.errors import CheckpointError
from .checkpoint.gguf_file import GGUF_TYPE_SUFFIX, tensor_shape
from .checkpoint.layouts import describe_lookalike

_ANCHOR = "encoder.final_layer_norm.weight"

# llama.cpp's T5 encoder tensor names (gguf-py MODEL_TENSOR.ENC_*) -> Hugging Face T5EncoderModel module names
GGUF_T5_ARCHITECTURES = ("t5encoder", "t5")
_LLAMA_CPP_TOP = {"token_embd": "shared", "enc.output_norm": "encoder.final_layer_norm"}
_LLAMA_CPP_BLOCK = {
    "attn_q": "layer.0.SelfAttention.q", "attn_k": "layer.0.SelfAttention.k", "attn_v": "layer.0.SelfAttention.v",
    "attn_o": "layer.0.SelfAttention.o", "attn_rel_b": "layer.0.SelfAttention.relative_attention_bias",
    "attn_norm": "layer.0.layer_norm", "ffn_norm": "layer.1.layer_norm", "ffn_gate": "layer.1.DenseReluDense.wi_0",
    "ffn_down": "layer.1.DenseReluDense.wo",
}  # ffn_up: wi_1 beside a gate (T5 v1.1, gated GELU), wi without (original T5)


def from_llama_cpp_names(tensors: dict[str, torch.Tensor], architecture: str, source: str) -> dict[str, torch.Tensor]:
    """A GGUF T5 (architecture `t5encoder`, or `t5` whose decoder is left out) under Hugging Face names; names it
    does not know stay as they are (and are then reported as unused by the loader)."""
    if architecture not in GGUF_T5_ARCHITECTURES:
        held = f"a GGUF '{architecture}' model" if architecture else "a GGUF file without an architecture"
        count = sum(not k.endswith(GGUF_TYPE_SUFFIX) for k in tensors)
        raise CheckpointError(
            f"{source} is {held} ({count} tensors), not a T5 text encoder. PixArt needs a T5-v1.1-XXL encoder "
            "GGUF (architecture t5encoder, e.g. t5-v1_1-xxl-encoder-Q8_0.gguf) in models/text_encoders.")
    gated = any(".ffn_gate." in k for k in tensors)
    out = {}
    for key, tensor in tensors.items():
        if key.startswith("dec.") and architecture == "t5":
            continue  # the decoder of a full T5; PixArt encodes only
        module, suffix = key.rsplit(".", 1)
        out[_hf_module(module, gated) + "." + suffix] = tensor
    return out


def _hf_module(module: str, gated: bool) -> str:
    if module in _LLAMA_CPP_TOP:
        return _LLAMA_CPP_TOP[module]
    match = re.fullmatch(r"enc\.blk\.(\d+)\.(\w+)", module)
    if match is None:
        return module
    part = match.group(2)
    name = "layer.1.DenseReluDense." + ("wi_1" if gated else "wi") if part == "ffn_up" else _LLAMA_CPP_BLOCK.get(part)
    return f"encoder.block.{match.group(1)}.{name}" if name else module


def to_t5_state_dict(state_dict: dict[str, torch.Tensor], source: str,
                     gguf_architecture: str | None = None) -> dict[str, torch.Tensor]:
    """Strip any prefix (a GGUF file's names: renamed from llama.cpp's, its architecture checked first); raise
    CheckpointError saying what the file is when it is not a T5 encoder."""
    if gguf_architecture is not None:
        state_dict = from_llama_cpp_names(state_dict, gguf_architecture, source)
    prefix = next((k[: -len(_ANCHOR)] for k in state_dict if k.endswith(_ANCHOR)), None)
    if prefix is None:
        if any(k.endswith("t_block.1.weight") or k.endswith("adaln_single.linear.weight") for k in state_dict):
            raise CheckpointError(f"{source} is a PixArt DiT, not a T5 text encoder; load it with the PixArt DiT loader.")
        raise CheckpointError(f"{source} is not a T5 text encoder: {describe_lookalike(state_dict)}")
    out = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    for name in ("weight", GGUF_TYPE_SUFFIX[1:]):
        if f"shared.{name}" not in out and f"encoder.embed_tokens.{name}" in out:
            out[f"shared.{name}"] = out[f"encoder.embed_tokens.{name}"]
        out.pop(f"encoder.embed_tokens.{name}", None)
    return out


def t5_config_from_weights(state_dict: dict[str, torch.Tensor], source: str) -> dict:
    """HF-style T5 config (d_model, d_kv, d_ff, heads, layers, vocab, gated activation) from tensor shapes."""
    def shape(key):
        return tensor_shape(state_dict, key)  # quantized GGUF tensors: values, not bytes

    try:
        vocab, d_model = shape("shared.weight")
        buckets, heads = shape("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
        inner = shape("encoder.block.0.layer.0.SelfAttention.q.weight")[0]
    except KeyError as err:
        raise CheckpointError(f"{source}: incomplete T5 encoder (no {err}); download it again.") from err
    layers = len({int(m.group(1)) for k in state_dict if (m := re.match(r"encoder\.block\.(\d+)\.", k))})
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in state_dict
    ff_key = "encoder.block.0.layer.1.DenseReluDense." + ("wi_0.weight" if gated else "wi.weight")
    return {
        "d_model": d_model,
        "d_kv": inner // heads,
        "d_ff": shape(ff_key)[0],
        "num_heads": heads,
        "num_layers": layers,
        "vocab_size": vocab,
        "relative_attention_num_buckets": buckets,
        "is_gated_act": gated,
        "dense_act_fn": "gelu_pytorch_tanh" if gated else "relu",
        "layer_norm_epsilon": 1e-6,
        "model_type": "t5",
    }
