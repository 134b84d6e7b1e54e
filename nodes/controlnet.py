"""PixArt ControlNets as ComfyUI CONTROL_NETs: core ControlNetApply / ControlNetApplyAdvanced and every sampler use them.

PixArtControl is core's ControlNet around the engine's PixArtControlNet, loaded as core loads its own ControlNets: the
network built on the host's operations for the dtypes the host picks (model_loading.storage_plan), weights placed
completely, and core's ControlNet wraps it in the host's patcher, so ComfyUI loads and offloads it with the base model
(get_models) and lowvram streams its layers. Core prepares the hint each step (resize to the latent, VAE encode, the
model's latent scaling, device, dtype, batch), checks the start/end percent and chains previous ControlNets; the
network returns the prepared hint as ControlInputs instead of residuals, because the copied blocks read base block 0's
output and so run inside the DiT forward (ComfyPixArtDiT takes them from the `control` argument under PIXART_CONTROL).
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace

import comfy.controlnet
import comfy.latent_formats
import comfy.model_management
import comfy.ops
from comfy_api.latest import io

from ..pixart.checkpoint.controlnet import ControlNetWeights, read_controlnet_weights
from ..pixart.checkpoint.errors import require_fit
from ..pixart.controlnet import ControlInput, PixArtControlNet
from ..pixart.dit import PixArtDiT
from . import host, model_files
from .control_dict import PIXART_CONTROL, UNET_CONTROL_KEYS
from .model_loading import WEIGHT_DTYPES, StoragePlan, storage_plan

log = logging.getLogger(__name__)

HINT_CAPTION_TOKENS = 300  # the longest PixArt caption: the copied blocks' keys and values are sized for it


class PixArtControl(comfy.controlnet.ControlNet):
    """Core's ControlNet for a latent-hint model (compression 1, a latent format, so the apply node's VAE is used)."""

    def __init__(self, control_model: PixArtControlNet | None, source: str, load_device, manual_cast_dtype):
        # the latent format is the sampled model's (pre_run); any one here makes core ask for the apply node's VAE
        super().__init__(control_model, compression_ratio=1, latent_format=comfy.latent_formats.SD15(),
                         load_device=load_device, manual_cast_dtype=manual_cast_dtype, extra_conds=[])
        self.source = source

    def copy(self):
        c = PixArtControl(None, self.source, self.load_device, self.manual_cast_dtype)
        c.control_model, c.control_model_wrapped = self.control_model, self.control_model_wrapped
        self.copy_to(c)
        return c

    def pre_run(self, model, percent_to_timestep_function):
        dit = getattr(model, "diffusion_model", None)
        if not isinstance(dit, PixArtDiT):
            raise ValueError(f"The PixArt ControlNet {self.source} was applied to a {type(model).__name__} model "
                             f"({type(dit).__name__}), not a PixArt DiT. Sample it with a PixArt MODEL (PixArt DiT "
                             "Loader), or use a ControlNet made for that model.")
        reason = self.control_model.check_base(dit.config)
        if reason is not None:
            raise ValueError(f"The PixArt ControlNet {self.source} does not fit this model ({dit.config.describe()}): "
                             f"{reason}.")
        base = self.control_model.config.base
        if base is not None and base.family != dit.config.family:
            log.warning("PixArt ControlNet %s was trained on %s; the model is %s. It runs, but it was not made for it.",
                        self.source, base.describe(), dit.config.describe())
        super().pre_run(model, percent_to_timestep_function)
        self.latent_format = model.latent_format  # the hint is encoded and scaled as the model's own latents

    def control_merge(self, control: list[ControlInput], control_prev, output_dtype):
        ours = [replace(item, strength=item.strength * self.strength) for item in control]
        if control_prev is None:
            return {key: [] for key in UNET_CONTROL_KEYS} | {PIXART_CONTROL: ours}
        if any(control_prev.get(key) for key in UNET_CONTROL_KEYS):
            raise ValueError(f"The PixArt ControlNet {self.source} is chained after a ControlNet for UNet models; "
                             "a PixArt model takes only PixArt ControlNets. Remove the other ControlNet apply node.")
        return {**control_prev, PIXART_CONTROL: list(control_prev.get(PIXART_CONTROL, [])) + ours}

    def inference_memory_requirements(self, dtype):
        """What the copied blocks hold beyond their weights while the DiT runs, for the hint's size with cond and
        uncond batched: hint tokens, the copied blocks' state and residual, and their caption keys/values."""
        hint = self.cond_hint_original
        extra = 0
        if hint is not None:
            config = self.control_model.config
            tokens = math.ceil(hint.shape[-2] / 16) * math.ceil(hint.shape[-1] / 16)  # 8x VAE, patch 2
            batch = 2 * hint.shape[0]
            elements = 3 * batch * tokens * config.hidden_size
            elements += config.depth * 2 * batch * HINT_CAPTION_TOKENS * config.hidden_size
            extra = elements * comfy.model_management.dtype_size(dtype)
        return super().inference_memory_requirements(dtype) + extra


def build_controlnet(weights: ControlNetWeights, weight_dtype: str) -> tuple[PixArtControlNet, StoragePlan]:
    """The network on the host's operations for the dtypes it picks, every weight placed, on the offload device."""
    plan = storage_plan(weight_dtype, weights.state_dict, weights.stored_dtype())
    operations = comfy.ops.pick_operations(plan.storage, plan.manual_cast, fp8_optimizations=plan.fp8_matmul)
    network = PixArtControlNet(weights.config, operations=operations, dtype=plan.storage, device=plan.offload_device)
    placed = network.load_state_dict(host.cast_for_storage(dict(weights.state_dict), plan.storage), strict=False)
    require_fit(weights.source, f"the detected ControlNet ({weights.config.describe()})",
                *host.unused_weights(placed.missing_keys, placed.unexpected_keys))
    log.info("Loaded %s: %s, weights %s, compute %s", weights.source, weights.config.describe(), plan.storage,
             plan.manual_cast or plan.storage)
    return network, plan


def load_controlnet_patcher(path: str, weight_dtype: str = "default", disable_dynamic: bool = False):
    """The ControlNet in the host's patcher alone: the reload factory ComfyUI calls for multi-GPU deep clones and
    non-dynamic delegates (cached_patcher_init)."""
    network, plan = build_controlnet(read_controlnet_weights(path), weight_dtype)
    patcher = host.patcher_class(disable_dynamic)(network, load_device=plan.load_device,
                                                  offload_device=plan.offload_device)
    patcher.cached_patcher_init = (load_controlnet_patcher, (path, weight_dtype))
    return patcher


def load_pixart_controlnet(path: str, weight_dtype: str = "default") -> PixArtControl:
    weights = read_controlnet_weights(path)
    network, plan = build_controlnet(weights, weight_dtype)
    control = PixArtControl(network, weights.source, plan.load_device, plan.manual_cast)
    control.control_model_wrapped.cached_patcher_init = (load_controlnet_patcher, (path, weight_dtype))
    return control


class PixArtControlNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return host.schema(
            node_id="PixArtControlNetLoader",
            display_name="PixArt ControlNet Loader",
            category="PixArt/loaders",
            description="Loads a PixArt ControlNet (PixArt-δ ControlNet-Transformer: the official PixArt-XL-2-*-"
                        "ControlNet.pth or a diffusers PixArtControlNetAdapterModel file) for core Apply ControlNet. "
                        "Connect a VAE to the apply node: the hint image is VAE-encoded.",
            search_aliases=["ControlNet", "control net", "ControlNetLoader", "HED", "PixArt-δ", "pixart"],
            inputs=[
                io.Combo.Input("control_net_name", options=model_files.choices("controlnet", "controlnet"),
                               tooltip="A PixArt ControlNet from models/controlnet, e.g. PixArt-XL-2-1024-ControlNet.pth "
                                       "(HED edges; the hint image's preprocessing is yours, e.g. a HED node)."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="Storage dtype of the ControlNet weights, as in the PixArt DiT Loader."),
            ],
            outputs=[io.ControlNet.Output(tooltip="The ControlNet for core Apply ControlNet, with the VAE connected "
                                                  "there; works with PixArt Sampler, KSampler or any sampler node.")],
        )

    @classmethod
    def execute(cls, control_net_name, weight_dtype):
        path = model_files.resolve("controlnet", "controlnet", control_net_name)
        return io.NodeOutput(load_pixart_controlnet(path, weight_dtype))
