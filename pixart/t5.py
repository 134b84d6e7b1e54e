"""T5 encoder checkpoints: recognise them and read their configuration from the weights.

Key names are Hugging Face's T5EncoderModel names (ComfyUI's T5 uses the same); any prefix before
`encoder.` (e.g. `text_encoders.t5xxl.transformer.`) is removed.
"""
from __future__ import annotations

import re

import torch

from .checkpoint.errors import CheckpointError
from .checkpoint.layouts import describe_lookalike

_ANCHOR = "encoder.final_layer_norm.weight"


def to_t5_state_dict(state_dict: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Strip any prefix; raise CheckpointError saying what the file is when it is not a T5 encoder."""
    prefix = next((k[: -len(_ANCHOR)] for k in state_dict if k.endswith(_ANCHOR)), None)
    if prefix is None:
        if any(k.endswith("t_block.1.weight") or k.endswith("adaln_single.linear.weight") for k in state_dict):
            raise CheckpointError(f"{source} is a PixArt DiT, not a T5 text encoder; load it with the PixArt DiT loader.")
        raise CheckpointError(f"{source} is not a T5 text encoder: {describe_lookalike(state_dict)}")
    out = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if "shared.weight" not in out and "encoder.embed_tokens.weight" in out:
        out["shared.weight"] = out["encoder.embed_tokens.weight"]
    out.pop("encoder.embed_tokens.weight", None)
    return out


def t5_config_from_weights(state_dict: dict[str, torch.Tensor], source: str) -> dict:
    """HF-style T5 config (d_model, d_kv, d_ff, heads, layers, vocab, gated activation) from tensor shapes."""
    try:
        vocab, d_model = state_dict["shared.weight"].shape
        heads = state_dict["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape[1]
        buckets = state_dict["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape[0]
        inner = state_dict["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
    except KeyError as err:
        raise CheckpointError(f"{source}: incomplete T5 encoder (no {err}); download it again.") from err
    layers = len({int(m.group(1)) for k in state_dict if (m := re.match(r"encoder\.block\.(\d+)\.", k))})
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in state_dict
    ff_key = "encoder.block.0.layer.1.DenseReluDense." + ("wi_0.weight" if gated else "wi.weight")
    return {
        "d_model": d_model,
        "d_kv": inner // heads,
        "d_ff": state_dict[ff_key].shape[0],
        "num_heads": heads,
        "num_layers": layers,
        "vocab_size": vocab,
        "relative_attention_num_buckets": buckets,
        "is_gated_act": gated,
        "dense_act_fn": "gelu_pytorch_tanh" if gated else "relu",
        "layer_norm_epsilon": 1e-6,
        "model_type": "t5",
    }
