"""PixArt LoRA Loader: a LoRA in any PixArt layout on a PixArt MODEL, through core's own LoRA loading.

Core's LoraLoader / LoraLoaderModelOnly read the layouts core's PixArt key map knows (the DiT is a PixArt model to
the host): diffusers (`transformer.`), PEFT (`base_model.model.`, `unet.base_model.model.`) and ComfyUI's names
(`diffusion_model.`, `lora_unet_`). This node also reads OneTrainer (`lora_transformer_`), unprefixed PEFT and the
original module names, in every adapter format core applies (LoRA, LoHa, LoKr, DoRA, full diff): it renames the
file's keys to names core reads (pixart.lora_keys) and hands them to core's comfy.sd.load_lora_for_models, so
strength, stacking and unloading are core's.
"""
from __future__ import annotations

import logging

import comfy.sd
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..pixart.lora_keys import common_module_names, rename_lora
from . import host
from .dit_model import pixart_dit

log = logging.getLogger(__name__)


def apply_lora(model, path: str, strength: float):
    """A clone of `model` with the LoRA file at `path` applied at `strength` by core; keys no PixArt layer takes are
    reported by core's loader as for any LoRA."""
    dit = pixart_dit(model, "this node maps PixArt LoRA layouts (use core's LoRA loaders for other models)")
    weights = [key for key in dit.state_dict() if key.endswith(".weight")]
    names = common_module_names(dit.config.depth, dit.config.hidden_size, weights)
    state_dict, metadata = comfy.utils.load_torch_file(path, safe_load=True, return_metadata=True)
    renamed, unknown = rename_lora(state_dict, names)
    if unknown:
        log.warning("PixArt LoRA %s: %d keys match no PixArt layer, e.g. %s", path, len(unknown), unknown[:3])
    kwargs = {"lora_metadata": metadata} if host.accepts(comfy.sd.load_lora_for_models, "lora_metadata") else {}
    return comfy.sd.load_lora_for_models(model, None, renamed, strength, 0.0, **kwargs)[0]


class PixArtLoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return host.schema(
            node_id="PixArtLoraLoader",
            search_aliases=["LoRA", "LoraLoaderModelOnly", "OneTrainer", "LyCORIS", "LoHa", "LoKr", "pixart"],
            display_name="PixArt LoRA Loader",
            category="PixArt/loaders",
            description="Applies a PixArt LoRA in any layout trainers write (diffusers, PEFT, OneTrainer, original "
                        "names; LoRA, LoHa, LoKr, DoRA, full diff) through ComfyUI's own LoRA code. Core's "
                        "LoraLoaderModelOnly works too for diffusers, PEFT and ComfyUI-named files.",
            inputs=[
                io.Model.Input("model", tooltip="A MODEL from the PixArt DiT Loader."),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                               tooltip="A LoRA file from models/loras."),
                io.Float.Input("strength_model", default=1.0, min=-100.0, max=100.0, step=0.01,
                               tooltip="How strongly the LoRA changes the model; 0 leaves it as it is, negative "
                                       "values subtract it."),
            ],
            outputs=[io.Model.Output(tooltip="A clone of the model with the LoRA; the input MODEL is unchanged.")],
        )

    @classmethod
    def execute(cls, model, lora_name, strength_model):
        if strength_model == 0:
            return io.NodeOutput(model)
        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        return io.NodeOutput(apply_lora(model, path, strength_model))
