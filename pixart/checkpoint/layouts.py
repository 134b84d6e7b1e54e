"""Key layouts of PixArt checkpoints and their conversion to the internal (original PixArt) layout.

Internal = the official PixArt-α/Σ repository's names: fused `attn.qkv`, `cross_attn.kv_linear`,
`t_block.1`, `y_embedder.*`, `final_layer.*`. diffusers' `PixArtTransformer2DModel` names are mapped
onto it by concatenating q/k/v rows.
"""
from __future__ import annotations

import re

import torch

from .errors import CheckpointError
from .quantization import is_quantization_key

ORIGINAL = "original"
DIFFUSERS = "diffusers"

# A key that exists in every checkpoint of the layout, used to find the layout and any prefix.
_ANCHORS = {ORIGINAL: "t_block.1.weight", DIFFUSERS: "adaln_single.linear.weight"}

# diffusers name -> internal name, outside the blocks.
DIFFUSERS_TOP = {
    "pos_embed.proj": "x_embedder.proj",
    "adaln_single.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "adaln_single.emb.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "adaln_single.emb.resolution_embedder.linear_1": "csize_embedder.mlp.0",
    "adaln_single.emb.resolution_embedder.linear_2": "csize_embedder.mlp.2",
    "adaln_single.emb.aspect_ratio_embedder.linear_1": "ar_embedder.mlp.0",
    "adaln_single.emb.aspect_ratio_embedder.linear_2": "ar_embedder.mlp.2",
    "adaln_single.linear": "t_block.1",
    "caption_projection.linear_1": "y_embedder.y_proj.fc1",
    "caption_projection.linear_2": "y_embedder.y_proj.fc2",
    "proj_out": "final_layer.linear",
}
DIFFUSERS_TOP_PARAMS = {
    "caption_projection.y_embedding": "y_embedder.y_embedding",
    "scale_shift_table": "final_layer.scale_shift_table",
}
# diffusers name inside transformer_blocks.N -> internal name inside blocks.N (one-to-one).
DIFFUSERS_BLOCK = {
    "attn1.to_out.0": "attn.proj",
    "attn1.norm_q": "attn.q_norm",
    "attn1.norm_k": "attn.k_norm",
    "attn2.to_q": "cross_attn.q_linear",
    "attn2.to_out.0": "cross_attn.proj",
    "ff.net.0.proj": "mlp.fc1",
    "ff.net.2": "mlp.fc2",
}
# Fused projections: internal name <- diffusers parts, concatenated along the output rows.
DIFFUSERS_FUSED = {
    "attn.qkv": ("attn1.to_q", "attn1.to_k", "attn1.to_v"),
    "cross_attn.kv_linear": ("attn2.to_k", "attn2.to_v"),
}
# Buffers the original code saved that carry no learned weights (kept only as evidence).
IGNORED_ORIGINAL = ("pos_embed",)

# Signatures of other model families, so that a wrong file gets a useful message.
_LOOKALIKES = (
    (("encoder.block.0.layer.0.SelfAttention.q.weight",), "a T5 text encoder",
     "load it with the PixArt T5 loader (text_encoders folder)"),
    (("shared.weight", "encoder.final_layer_norm.weight"), "a T5 text encoder",
     "load it with the PixArt T5 loader (text_encoders folder)"),
    (("decoder.conv_in.weight", "encoder.conv_in.weight"), "a VAE", "load it with a VAE loader (vae folder)"),
    (("text_model.encoder.layers.0.self_attn.q_proj.weight",), "a CLIP text encoder",
     "PixArt uses T5; load this with a CLIP loader for SD models"),
    (("input_blocks.0.0.weight",), "a Stable Diffusion UNet", "load it with a checkpoint/UNet loader"),
    (("down_blocks.0.resnets.0.conv1.weight", "conv_in.weight"), "a diffusers UNet",
     "load it with a UNet loader"),
    (("double_blocks.0.img_attn.qkv.weight",), "a Flux transformer", "load it with the diffusion model loader"),
    (("joint_blocks.0.x_block.attn.qkv.weight",), "a Stable Diffusion 3 MMDiT",
     "load it with the diffusion model loader"),
    (("lora_A", "lora_B", "lora_down", "lora_up", "lora_unet_"), "a LoRA",
     "apply it with a LoRA loader on top of a PixArt model"),
)


def _find_prefix(keys, anchor: str) -> str | None:
    for key in keys:
        if key.endswith(anchor):
            return key[: -len(anchor)]
    return None


def detect_layout(state_dict: dict[str, torch.Tensor], source: str) -> tuple[str, str]:
    """-> (layout, key prefix). Raises CheckpointError describing what a non-PixArt file looks like."""
    for layout, anchor in _ANCHORS.items():
        prefix = _find_prefix(state_dict, anchor)
        if prefix is not None:
            return layout, prefix
    raise CheckpointError(f"{source} is not a PixArt DiT: {describe_lookalike(state_dict)}")


def describe_lookalike(state_dict: dict[str, torch.Tensor]) -> str:
    keys = list(state_dict)
    for needles, what, advice in _LOOKALIKES:
        if any(any(needle in key for key in keys) for needle in needles):
            return f"it looks like {what}; {advice}."
    sample = ", ".join(keys[:4]) or "no tensors"
    return (f"its {len(keys)} tensors ({sample}, ...) match no known model layout. "
            "Use a PixArt-Σ/α transformer (.pth, .safetensors or a diffusers 'transformer' folder).")


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if not prefix:
        return dict(state_dict)
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def diffusers_to_internal(state_dict: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Rename and fuse diffusers keys; every key is accounted for or reported."""
    quantized = sorted(k for k in state_dict if is_quantization_key(k))
    if quantized:
        raise CheckpointError(
            f"{source} is a quantized diffusers-layout file ({', '.join(quantized[:3])}, ...): its separate q/k/v "
            "weights carry their own scales and cannot be fused into PixArt's attention weights. Use the "
            "unquantized file with the loader's weight_dtype set to fp8, or a quantized original-layout file.")
    out: dict[str, torch.Tensor] = {}
    remaining = dict(state_dict)

    def take(name: str) -> torch.Tensor:
        return remaining.pop(name)

    for src, dst in DIFFUSERS_TOP_PARAMS.items():
        if src in remaining:
            out[dst] = take(src)
    for src, dst in DIFFUSERS_TOP.items():
        for kind in ("weight", "bias"):
            if f"{src}.{kind}" in remaining:
                out[f"{dst}.{kind}"] = take(f"{src}.{kind}")

    blocks = sorted({int(m.group(1)) for k in remaining if (m := re.match(r"transformer_blocks\.(\d+)\.", k))})
    for index in blocks:
        src_block, dst_block = f"transformer_blocks.{index}.", f"blocks.{index}."
        if src_block + "scale_shift_table" in remaining:
            out[dst_block + "scale_shift_table"] = take(src_block + "scale_shift_table")
        for src, dst in DIFFUSERS_BLOCK.items():
            for kind in ("weight", "bias"):
                if f"{src_block}{src}.{kind}" in remaining:
                    out[f"{dst_block}{dst}.{kind}"] = take(f"{src_block}{src}.{kind}")
        for dst, parts in DIFFUSERS_FUSED.items():
            for kind in ("weight", "bias"):
                names = [f"{src_block}{part}.{kind}" for part in parts]
                present = [n for n in names if n in remaining]
                if not present:
                    continue
                if len(present) != len(names):
                    missing = sorted(set(names) - set(present))
                    raise CheckpointError(f"{source}: incomplete attention weights, missing {missing}.")
                out[f"{dst_block}{dst}.{kind}"] = torch.cat([take(n) for n in names], dim=0)
    if remaining:
        raise CheckpointError(
            f"{source}: {len(remaining)} diffusers tensors have no place in a PixArt DiT "
            f"({', '.join(sorted(remaining)[:6])}). It may be a different transformer model."
        )
    return out


def to_internal(state_dict: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], str]:
    """Any supported layout -> (internal state dict, layout name)."""
    layout, prefix = detect_layout(state_dict, source)
    tensors = strip_prefix(state_dict, prefix)
    if layout == DIFFUSERS:
        tensors = diffusers_to_internal(tensors, source)
    return tensors, layout
