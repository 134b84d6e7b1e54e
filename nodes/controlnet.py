"""PixArt ControlNets as ComfyUI CONTROL_NETs: core ControlNetApply / ControlNetApplyAdvanced and every sampler use them.

The ControlNet is a BaseModel in the host's patcher, loaded like the DiT (dit_model.host_model), so ComfyUI loads and
offloads it with the base model (get_models) and lowvram streams its layers. PixArtControl is core's ControlNet with the
PixArt parts swapped in: core prepares the hint each step (resize to the latent as core does, VAE encode, the model's
latent scaling, device, dtype, batch), checks the start/end percent and chains previous ControlNets; our control model
returns the prepared hint instead of residuals, because the copied blocks read base block 0's output and so run inside
the DiT forward (ComfyPixArtDiT takes them from the `control` argument under dit_model.PIXART_CONTROL).
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace

import comfy.controlnet
import comfy.latent_formats
import comfy.model_base
import comfy.model_management
from comfy_api.latest import io

from ..pixart.checkpoint.controlnet import read_controlnet_weights
from ..pixart.controlnet import ControlInput, ControlNetConfig, PixArtControlNet
from ..pixart.dit import PixArtDiT
from . import host, model_files
from .dit_model import PIXART_CONTROL, UNET_CONTROL_KEYS, WEIGHT_DTYPES, _PixArtBase, host_model

log = logging.getLogger(__name__)

HINT_CAPTION_TOKENS = 300  # the longest PixArt caption: the copied blocks' keys and values are sized for it


class ComfyPixArtControlNet(PixArtControlNet):
    """The ControlNet module with the call core's ControlNet.get_control makes: it gets the prepared hint and hands it
    on to the DiT, which runs the copied blocks between its own."""

    def __init__(self, control_config: ControlNetConfig, dtype=None, device=None, operations=None):
        super().__init__(control_config, operations=operations, dtype=dtype, device=device)
        self.dtype = dtype

    def forward(self, x=None, hint=None, timesteps=None, context=None, **kwargs):
        # hint (B, C, H, W): the control image resized, VAE-encoded and scaled like the latent x
        return {PIXART_CONTROL: [ControlInput(self, hint)]}


class PixArtControlModel(comfy.model_base.BaseModel):
    def __init__(self, model_config, device=None):
        super().__init__(model_config, comfy.model_base.ModelType.EPS, device=device, unet_model=ComfyPixArtControlNet)


class PixArtControlNetModelConfig(_PixArtBase):
    latent_format = comfy.latent_formats.SD15  # PixArt-α's; the model it is applied to decides (PixArtControl.pre_run)

    def get_model(self, state_dict, prefix="", device=None):
        return PixArtControlModel(self, device=device).eval()


class PixArtControl(comfy.controlnet.ControlNet):
    """Core's ControlNet for a latent-hint model (compression 1, a latent format, so the apply node's VAE is used)."""

    def __init__(self, patcher, source: str):
        model = patcher.model
        super().__init__(None, compression_ratio=1, latent_format=model.latent_format, load_device=patcher.load_device,
                         manual_cast_dtype=model.manual_cast_dtype, extra_conds=[])
        self.control_model = model.diffusion_model
        self.control_model_wrapped = patcher
        self.source = source

    def copy(self):
        c = PixArtControl(self.control_model_wrapped, self.source)
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

    def control_merge(self, control, control_prev, output_dtype):
        ours = [replace(item, strength=item.strength * self.strength) for item in control[PIXART_CONTROL]]
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


def load_controlnet_patcher(path: str, weight_dtype: str = "default", disable_dynamic: bool = False):
    """A PixArt ControlNet file -> the host's patcher around PixArtControlModel, weights loaded completely."""
    weights = read_controlnet_weights(path)
    model_config = PixArtControlNetModelConfig({"control_config": weights.config})
    patcher = host_model(model_config, weights.state_dict, host.HostQuantization(), weights.stored_dtype(), weight_dtype,
                         weights.source, weights.config.describe(), disable_dynamic)
    patcher.cached_patcher_init = (load_controlnet_patcher, (path, weight_dtype))
    return patcher, weights.source


def load_pixart_controlnet(path: str, weight_dtype: str = "default") -> PixArtControl:
    patcher, source = load_controlnet_patcher(path, weight_dtype)
    return PixArtControl(patcher, source)


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
