"""Tiny random-weight PixArt transformers (diffusers reference classes) saved in every layout we load.

Every parameter is randomised, including the ones diffusers initialises to zero, so that no path of the
model can hide behind a zero weight.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file

HEADS = 2
HEAD_DIM = 72  # PixArt's head width; the loader reads heads as hidden / 72
CAPTION_CHANNELS = 32
SAMPLE_SIZE = 128  # trained latent side of the 1024 px checkpoints


def tiny_transformer(family: str = "sigma", micro_conditions: bool = False, depth: int = 2, seed: int = 0,
                     sample_size: int = SAMPLE_SIZE, interpolation_scale: float | None = None):
    from diffusers import PixArtTransformer2DModel

    if interpolation_scale is None and family == "sigma":
        interpolation_scale = 2.0  # Σ configs name it; α leaves it to diffusers' default (sample_size / 64)
    torch.manual_seed(seed)
    model = PixArtTransformer2DModel(
        num_attention_heads=HEADS,
        attention_head_dim=HEAD_DIM,
        in_channels=4,
        out_channels=8,
        num_layers=depth,
        sample_size=sample_size,
        patch_size=2,
        cross_attention_dim=HEADS * HEAD_DIM,
        caption_channels=CAPTION_CHANNELS,
        norm_type="ada_norm_single",
        use_additional_conditions=micro_conditions,
        interpolation_scale=interpolation_scale,
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim >= 2 and "scale_shift_table" not in name:
                noise /= (param[0].numel()) ** 0.5  # fan-in scaling keeps activations O(1)
            else:
                noise *= 0.1  # biases and modulation tables: small but never zero
            param.copy_(noise)
    model.eval()
    tokens = 300 if family == "sigma" else 120
    null_caption = torch.randn(tokens, CAPTION_CHANNELS, generator=generator)
    return model, null_caption


def original_layout(model, null_caption: torch.Tensor) -> dict[str, torch.Tensor]:
    """The official PixArt repository's key names for a diffusers model's weights (written independently of
    the engine's converter, from the published conversion rules)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {}

    def move(src, dst):
        for kind in ("weight", "bias"):
            if f"{src}.{kind}" in sd:
                out[f"{dst}.{kind}"] = sd.pop(f"{src}.{kind}")

    move("pos_embed.proj", "x_embedder.proj")
    move("adaln_single.emb.timestep_embedder.linear_1", "t_embedder.mlp.0")
    move("adaln_single.emb.timestep_embedder.linear_2", "t_embedder.mlp.2")
    move("adaln_single.emb.resolution_embedder.linear_1", "csize_embedder.mlp.0")
    move("adaln_single.emb.resolution_embedder.linear_2", "csize_embedder.mlp.2")
    move("adaln_single.emb.aspect_ratio_embedder.linear_1", "ar_embedder.mlp.0")
    move("adaln_single.emb.aspect_ratio_embedder.linear_2", "ar_embedder.mlp.2")
    move("adaln_single.linear", "t_block.1")
    move("caption_projection.linear_1", "y_embedder.y_proj.fc1")
    move("caption_projection.linear_2", "y_embedder.y_proj.fc2")
    move("proj_out", "final_layer.linear")
    out["final_layer.scale_shift_table"] = sd.pop("scale_shift_table")
    out["y_embedder.y_embedding"] = null_caption.clone()
    for i in range(len(model.transformer_blocks)):
        b, o = f"transformer_blocks.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{o}attn.qkv.{kind}"] = torch.cat([sd.pop(f"{b}attn1.to_{x}.{kind}") for x in "qkv"])
            out[f"{o}cross_attn.kv_linear.{kind}"] = torch.cat([sd.pop(f"{b}attn2.to_{x}.{kind}") for x in "kv"])
        move(f"{b}attn1.to_out.0", f"{o}attn.proj")
        move(f"{b}attn2.to_q", f"{o}cross_attn.q_linear")
        move(f"{b}attn2.to_out.0", f"{o}cross_attn.proj")
        move(f"{b}ff.net.0.proj", f"{o}mlp.fc1")
        move(f"{b}ff.net.2", f"{o}mlp.fc2")
        out[f"{o}scale_shift_table"] = sd.pop(f"{b}scale_shift_table")
    assert not sd, f"unmapped diffusers keys: {sorted(sd)}"
    # The official code saves its (trained-size) positional embedding buffer too.
    side = model.config.sample_size // model.config.patch_size
    out["pos_embed"] = torch.zeros(1, side * side, model.config.num_attention_heads * model.config.attention_head_dim)
    return out


def diffusers_layout(model, null_caption: torch.Tensor) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    sd["caption_projection.y_embedding"] = null_caption.clone()
    return sd


def save_all_layouts(model, null_caption: torch.Tensor, folder: str, name: str, pipeline_class: str) -> dict[str, str]:
    """Write the model as: original .pth ({"state_dict": ...}), original .safetensors, original .pth with a
    'model.diffusion_model.' prefix in fp16, diffusers single .safetensors, diffusers repo folder (sharded
    transformer + model_index.json), and fp8/bf16 originals. Returns {layout label: path}."""
    os.makedirs(folder, exist_ok=True)
    original = original_layout(model, null_caption)
    diffusers_sd = diffusers_layout(model, null_caption)
    paths = {}

    paths["original_pth"] = os.path.join(folder, f"{name}.pth")
    torch.save({"state_dict": original}, paths["original_pth"])
    paths["original_safetensors"] = os.path.join(folder, f"{name}.safetensors")
    save_file(original, paths["original_safetensors"])
    paths["prefixed_fp16_pth"] = os.path.join(folder, f"{name}-prefixed-fp16.pth")
    torch.save({f"model.diffusion_model.{k}": v.half() for k, v in original.items()}, paths["prefixed_fp16_pth"])
    paths["original_bf16"] = os.path.join(folder, f"{name}-bf16.safetensors")
    save_file({k: v.bfloat16() for k, v in original.items()}, paths["original_bf16"])
    paths["original_fp8"] = os.path.join(folder, f"{name}-fp8.safetensors")
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in original.items()}, paths["original_fp8"])
    paths["diffusers_single"] = os.path.join(folder, f"{name}-diffusers.safetensors")
    save_file(diffusers_sd, paths["diffusers_single"])

    repo = os.path.join(folder, f"{name}-repo")
    transformer = os.path.join(repo, "transformer")
    os.makedirs(transformer, exist_ok=True)
    keys = sorted(diffusers_sd)
    half = len(keys) // 2
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[:half],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[half:]}
    weight_map = {}
    for shard, shard_keys in shards.items():
        save_file({k: diffusers_sd[k] for k in shard_keys}, os.path.join(transformer, shard))
        weight_map.update({k: shard for k in shard_keys})
    with open(os.path.join(transformer, "diffusion_pytorch_model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {}, "weight_map": weight_map}, fh)
    config = dict(model.config)
    config["_class_name"] = "PixArtTransformer2DModel"
    with open(os.path.join(transformer, "config.json"), "w") as fh:
        json.dump(config, fh, default=str)
    with open(os.path.join(repo, "model_index.json"), "w") as fh:
        json.dump({"_class_name": pipeline_class}, fh)
    paths["diffusers_repo"] = repo
    paths["diffusers_transformer_folder"] = transformer
    return paths
