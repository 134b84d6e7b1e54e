"""The PixArt DiT as a ComfyUI model: the network with ComfyUI's call (wrappers, patch points, attention dispatch, caption
cache, KV compression, ControlNets), core's PixArt model class around it and the per-family model configs. Loading
weights into it is nodes/model_loading.py's.
"""
from __future__ import annotations

from dataclasses import replace

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.patcher_extension
import comfy.supported_models_base
import torch

from ..pixart.config import DiTConfig
from ..pixart.dit import PixArtDiT
from ..pixart.kv_compress import in_compressed_steps
from ..pixart.schedule import BETA_END, BETA_START, TRAIN_STEPS
from . import caption_cache, patch_points
from .attention import attention_for
from .control_dict import PIXART_CONTROL, UNET_CONTROL_KEYS

# transformer_options keys: a pixart.kv_compress.KVCompress for the run, and the fraction of the steps run, from the
# first, that it applies to (1.0 = every step).
KV_COMPRESS_OPTION = "pixart_kv_compress"
KV_STEPS_OPTION = "pixart_kv_steps"

# Measured by bench/memory_usage_factor.py (peak activation bytes of one forward relative to ComfyUI's
# area * dtype_size * 0.01 MiB formula); see the README's Benchmarks section.
MEMORY_USAGE_FACTOR = 0.52  # measured 0.32-0.51 for 64-128 latent sides (2026-11-23, CPU, fp32)


def pixart_dit(model, needed_for: str = "KV compression and the learned null caption need one") -> PixArtDiT:
    """The PixArt DiT inside a MODEL, or an error naming what needs one."""
    dit = model.get_model_object("diffusion_model")
    if not isinstance(dit, PixArtDiT):
        raise ValueError(f"This MODEL is not a PixArt DiT from the PixArt DiT Loader; {needed_for}.")
    return dit


class ComfyPixArtDiT(PixArtDiT):
    """PixArtDiT with ComfyUI's diffusion_model call: the host's DIFFUSION_MODEL wrappers around each call (EasyCache and
    the like), its attention dispatch, its patch points per block (nodes/patch_points.py), the run's caption cache and
    KV compression, PixArt ControlNets from the control dict."""

    def __init__(self, dit_config: DiTConfig, dtype=None, device=None, operations=None, **unet_config):
        # unet_config's other entries (depth, hidden_size) describe the model to the host's LoRA key map
        super().__init__(dit_config, operations=operations, dtype=dtype, device=device)
        self.dtype = dtype

    def forward(self, x, timesteps, context, attention_mask=None, c_size=None, c_ar=None, control=None,
                transformer_options=None, **kwargs):
        options = transformer_options if transformer_options is not None else {}
        wrappers = comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, options)
        executor = comfy.patcher_extension.WrapperExecutor.new_class_executor(self._forward, self, wrappers)
        # transformer_options last among the positional arguments, where core's wrappers (EasyCache) look for it
        return executor.execute(x, timesteps, context, attention_mask, c_size, c_ar, control, options, **kwargs)

    def _forward(self, x, timesteps, context, attention_mask, c_size, c_ar, control, options, **kwargs):
        # x (B, C, H, W); timesteps (B,); context (B, L, caption_channels); attention_mask (B, L)
        attention_function = attention_for(x.device)

        def attention_with(block_options):
            def attention(q, k, v, heads, mask=None):
                return attention_function(q, k, v, heads, mask=mask, transformer_options=block_options)
            return attention

        config = self.config
        block_patches = patch_points.block_patches_for(options, attention_with, config.depth, config.num_heads,
                                                       config.hidden_size // config.num_heads)
        caption = caption_cache.encode_caption(self, options, context, attention_mask, x.dtype)
        out = super().forward(x, timesteps, None, c_size=c_size, c_ar=c_ar, kv_compress=kv_for_call(options),
                              attention=attention_with(options), caption=caption,
                              control=self._control_inputs(control, context, attention_mask, x.dtype),
                              block_patches=block_patches)
        return out[:, : config.in_channels]  # epsilon; the learned-variance channels are not used

    def _control_inputs(self, control: dict | None, context, attention_mask, dtype) -> list | None:
        """The PixArt ControlNets in ComfyUI's control dict, with their copied blocks' captions encoded: at every step, not
        cached (the caption projection and one K/V projection per copied block; the caption cache keeps the DiT's)."""
        if not control:
            return None
        if any(control.get(key) for key in UNET_CONTROL_KEYS):
            raise ValueError("A ControlNet for UNet models (SD1.5/SDXL residuals) reached a PixArt model. PixArt runs "
                             "only PixArt ControlNets: load one with the PixArt ControlNet Loader.")
        inputs = control.get(PIXART_CONTROL) or []
        return [replace(item, caption=item.net.encode_caption(self.y_embedder, context, attention_mask, dtype))
                for item in inputs]


def kv_for_call(options: dict):
    """The run's KV compression setting if this model call lies within its compressed steps, else None."""
    compress = options.get(KV_COMPRESS_OPTION)
    if compress is None:
        return None
    sigmas, run = options.get("sigmas"), options.get("sample_sigmas")
    if sigmas is None or run is None:  # called outside a sampling run: the setting holds
        return compress
    fraction = options.get(KV_STEPS_OPTION, 1.0)
    return compress if in_compressed_steps(float(sigmas.max()), run.tolist(), fraction) else None


class _PackNetwork(comfy.model_base.BaseModel):
    """Hands BaseModel this pack's DiT as the network to build, in place of the one the class before it in the MRO
    names (core's PixArt passes its own PixArtMS up through super().__init__)."""

    def __init__(self, model_config, model_type, device=None, unet_model=None):
        super().__init__(model_config, model_type, device=device, unet_model=ComfyPixArtDiT)


class PixArtModel(comfy.model_base.PixArt, _PackNetwork):
    """Our DiT as a ComfyUI model: to the host it is a PixArt model (core's PixArt class runs its own __init__ and
    extra_conds, and core's LoRA key map for PixArt applies: diffusers and PEFT names, fused q/k/v slices), epsilon
    prediction, built on the host's operations and model sampling; the network is this pack's (_PackNetwork)."""

    def __init__(self, model_config, device=None):
        super().__init__(model_config, comfy.model_base.ModelType.EPS, device=device)

    def memory_required(self, input_shape, cond_shapes=None):
        """ComfyUI's activation estimate plus the encoded caption: every block's keys and values for this batch,
        held through the forward, and as much again for the run's other cached batch (cond and uncond split)."""
        cond_shapes = cond_shapes or {}
        config = self.diffusion_model.config
        tokens = max((shape[1] for shape in cond_shapes.get("c_crossattn", []) if len(shape) == 3),
                     default=config.caption_tokens)
        dtype = self.manual_cast_dtype or self.get_dtype()
        table = config.depth * 2 * input_shape[0] * tokens * config.hidden_size * comfy.model_management.dtype_size(dtype)
        return super().memory_required(input_shape, cond_shapes=cond_shapes) + 2 * table

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)  # core PixArt's: the caption, CLIPTextEncodePixArtAlpha's micro-conditions
        cross_attn, mask = kwargs.get("cross_attn"), kwargs.get("attention_mask")
        if mask is not None and cross_attn is not None and mask.shape[-1] == cross_attn.shape[1]:
            out["attention_mask"] = comfy.conds.CONDRegular(mask)
        return out


class PixArtModelConfig(comfy.supported_models_base.BASE):
    """What ComfyUI needs to know about a PixArt DiT beyond its network: its noise schedule (ComfyUI's "sqrt_linear"
    is linear in beta, pixart.schedule's), memory use and compute dtypes; the latent format per family below."""

    unet_config = {}
    unet_extra_config = {}
    sampling_settings = {"beta_schedule": "sqrt_linear", "linear_start": BETA_START, "linear_end": BETA_END,
                         "timesteps": TRAIN_STEPS}
    memory_usage_factor = MEMORY_USAGE_FACTOR
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]

    def get_model(self, state_dict, prefix="", device=None):
        return PixArtModel(self, device=device).eval()


class PixArtSigmaConfig(PixArtModelConfig):
    latent_format = comfy.latent_formats.SDXL


class PixArtAlphaConfig(PixArtModelConfig):
    latent_format = comfy.latent_formats.SD15
