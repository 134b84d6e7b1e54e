"""PixArt LoRA layouts for ComfyUI's own LoRA loaders (LoraLoader, LoraLoaderModelOnly, hooks).

ComfyUI builds a LoRA key map per model type in comfy.lora.model_lora_keys_unet; for PixArt it knows the
diffusers/PEFT prefixes. This adds, for our model only and without replacing any existing entry, the layouts it
lacks (OneTrainer, unprefixed PEFT) from pixart.lora_keys. Strength, stacking and unloading stay ComfyUI's:
weights are patched by the ModelPatcher, never merged into the loaded model.
"""
from __future__ import annotations

import comfy.lora

from ..pixart.lora_keys import lora_key_map
from .dit_model import PixArtModel


def pixart_lora_keys(model, key_map: dict) -> dict:
    config = model.diffusion_model.config
    weights = [k for k in model.diffusion_model.state_dict() if k.endswith(".weight")]
    for name, (weight, rows) in lora_key_map(config.depth, config.hidden_size, weights).items():
        target = f"diffusion_model.{weight}"
        key_map.setdefault(name, target if rows is None else (target, (0, rows[0], rows[1])))
    return key_map


def install() -> None:
    """Extend ComfyUI's LoRA key mapping once; other model types are untouched."""
    original = comfy.lora.model_lora_keys_unet
    if getattr(original, "pixart_layouts", False):
        return

    def model_lora_keys_unet(model, key_map=None):
        key_map = original(model, {} if key_map is None else key_map)
        if isinstance(model, PixArtModel):
            key_map = pixart_lora_keys(model, key_map)
        return key_map

    model_lora_keys_unet.pixart_layouts = True
    comfy.lora.model_lora_keys_unet = model_lora_keys_unet
