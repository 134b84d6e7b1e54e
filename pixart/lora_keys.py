"""Where each LoRA module of the common PixArt LoRA layouts lands in our (original-layout) weights.

Layouts: diffusers / PEFT names (`transformer.`, `base_model.model.`, `unet.base_model.model.` or no prefix,
e.g. `transformer.transformer_blocks.3.attn1.to_q`), OneTrainer (`lora_transformer_transformer_blocks_3_attn1_to_q`),
and our own names (`blocks.3.attn.qkv`, `diffusion_model.…`, `lora_unet_blocks_3_attn_qkv`).
diffusers' separate q/k/v (and cross-attention k/v) land on row slices of the fused `attn.qkv` / `kv_linear`.
The correspondence is the same table that converts diffusers checkpoints (checkpoint.layouts).
"""
from __future__ import annotations

from collections.abc import Iterable

from .checkpoint.layouts import DIFFUSERS_BLOCK, DIFFUSERS_FUSED, DIFFUSERS_TOP

DIFFUSERS_PREFIXES = ("transformer.", "base_model.model.", "unet.base_model.model.", "")
ONETRAINER_PREFIX = "lora_transformer_"
COMFY_PREFIX = "diffusion_model."
KOHYA_PREFIX = "lora_unet_"

Target = tuple[str, tuple[int, int] | None]  # (internal weight key, (first row, rows) of a fused weight or None)


def diffusers_targets(depth: int, hidden_size: int) -> dict[str, Target]:
    """diffusers module name -> our weight (and row slice for the fused projections)."""
    targets: dict[str, Target] = {src: (f"{dst}.weight", None) for src, dst in DIFFUSERS_TOP.items()}
    for index in range(depth):
        src_block, dst_block = f"transformer_blocks.{index}.", f"blocks.{index}."
        for src, dst in DIFFUSERS_BLOCK.items():
            targets[src_block + src] = (f"{dst_block}{dst}.weight", None)
        for dst, parts in DIFFUSERS_FUSED.items():
            for position, part in enumerate(parts):
                targets[src_block + part] = (f"{dst_block}{dst}.weight", (position * hidden_size, hidden_size))
    return targets


def lora_key_map(depth: int, hidden_size: int, weights: Iterable[str]) -> dict[str, Target]:
    """Every LoRA module name of the supported layouts -> target, for the weights this model has."""
    weights = set(weights)
    key_map: dict[str, Target] = {}
    for name, target in diffusers_targets(depth, hidden_size).items():
        if target[0] not in weights:
            continue
        for prefix in DIFFUSERS_PREFIXES:
            key_map[prefix + name] = target
        key_map[ONETRAINER_PREFIX + name.replace(".", "_")] = target
    for weight in weights:
        if weight.endswith(".weight"):
            module = weight[: -len(".weight")]
            for alias in (module, COMFY_PREFIX + module, KOHYA_PREFIX + module.replace(".", "_")):
                key_map.setdefault(alias, (weight, None))
    return key_map


def common_module_names(depth: int, hidden_size: int, weights: Iterable[str]) -> dict[str, str]:
    """Every LoRA module name of the supported layouts -> the one name for its target that LoRA readers keyed on
    ComfyUI's and diffusers' PixArt names understand: `diffusion_model.<our module>` for a whole weight,
    `transformer.<diffusers module>` for a row slice of a fused projection (q, k, v)."""
    sliced = {target: name for name, target in diffusers_targets(depth, hidden_size).items() if target[1] is not None}
    names = {}
    for alias, target in lora_key_map(depth, hidden_size, weights).items():
        if target[1] is None:
            names[alias] = COMFY_PREFIX + target[0][: -len(".weight")]
        else:
            names[alias] = DIFFUSERS_PREFIXES[0] + sliced[target]
    return names


def rename_lora(state_dict: dict, module_names: dict[str, str]) -> tuple[dict, list[str]]:
    """A LoRA file's tensors with each key's module part (the longest known module name it starts with, followed by
    the adapter's own suffix: .lora_down.weight, .hada_w1_a, .alpha, ...) replaced by its common name;
    -> (renamed state dict, keys whose module is not a PixArt layer, left as they are)."""
    renamed, unknown = {}, []
    for key, tensor in state_dict.items():
        parts = key.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            module = ".".join(parts[:cut])
            if module in module_names:
                renamed[".".join([module_names[module], *parts[cut:]])] = tensor
                break
        else:
            renamed[key] = tensor
            unknown.append(key)
    return renamed, unknown
