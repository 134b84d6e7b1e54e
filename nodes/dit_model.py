"""The PixArt DiT as a ComfyUI model: BaseModel subclass, per-family model configs, loading into a ModelPatcher.

ComfyUI picks the weight/compute dtypes, casting ops (fp8 included), devices and lowvram partial loading;
we only describe the model and hand it the weights.
"""
from __future__ import annotations

import logging

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models_base
import torch

from ..pixart.checkpoint import DiTWeights, read_dit_weights
from ..pixart.config import ALPHA, DiTConfig
from ..pixart.dit import PixArtDiT
from . import caption_cache
from .attention import attention_for

log = logging.getLogger(__name__)

# transformer_options keys: a pixart.kv_compress.KVCompress for the run, and the lowest sigma it applies at
# (compression only while the current sigma is at or above it; 0 = every step).
KV_COMPRESS_OPTION = "pixart_kv_compress"
KV_MIN_SIGMA_OPTION = "pixart_kv_min_sigma"

# Measured by bench/memory_usage_factor.py (peak activation bytes of one forward relative to ComfyUI's
# area * dtype_size * 0.01 MiB formula); see the README's Benchmarks section.
MEMORY_USAGE_FACTOR = 0.52  # measured 0.32-0.51 for 64-128 latent sides (2026-11-23, CPU, fp32)


class ComfyPixArtDiT(PixArtDiT):
    """PixArtDiT with ComfyUI's diffusion_model call signature and attention dispatch."""

    def __init__(self, dit_config: DiTConfig, dtype=None, device=None, operations=None, depth=None, hidden_size=None):
        # depth / hidden_size repeat dit_config's values in unet_config for ComfyUI's LoRA key mapping.
        super().__init__(dit_config, operations=operations, dtype=dtype, device=device)
        self.dtype = dtype

    def forward(self, x, timesteps, context, attention_mask=None, c_size=None, c_ar=None,
                transformer_options=None, control=None, **kwargs):
        options = transformer_options or {}
        attention_function = attention_for(x.device)

        def attention(q, k, v, heads, mask=None):
            return attention_function(q, k, v, heads, mask=mask, transformer_options=options)

        caption = caption_cache.encode_caption(self, options, context, attention_mask, x.dtype)
        out = super().forward(x, timesteps, None, c_size=c_size, c_ar=c_ar, kv_compress=_kv_for_step(options),
                              attention=attention, caption=caption)
        return out[:, : self.config.in_channels]  # epsilon; the learned-variance channels are not used


def _kv_for_step(options: dict):
    compress = options.get(KV_COMPRESS_OPTION)
    if compress is None:
        return None
    sigmas = options.get("sigmas")
    if sigmas is not None and float(sigmas.max()) < options.get(KV_MIN_SIGMA_OPTION, 0.0):
        return None
    return compress


class PixArtModel(comfy.model_base.PixArt):
    """Our DiT in ComfyUI's PixArt model slot: being a comfy PixArt makes ComfyUI's own LoRA key mapping
    (diffusers/PEFT names onto the fused qkv/kv weights) apply, since our weights keep the original names."""

    def __init__(self, model_config, device=None):
        comfy.model_base.BaseModel.__init__(self, model_config, comfy.model_base.ModelType.EPS, device=device,
                                            unet_model=ComfyPixArtDiT)

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
        out = comfy.model_base.BaseModel.extra_conds(self, **kwargs)
        cross_attn = kwargs.get("cross_attn")
        if cross_attn is not None:
            # Regular (not CrossAttn) conds are never padded by repetition, which would break the mask.
            out["c_crossattn"] = comfy.conds.CONDRegular(cross_attn)
        mask = kwargs.get("attention_mask")
        if mask is not None and cross_attn is not None and mask.shape[-1] == cross_attn.shape[1]:
            out["attention_mask"] = comfy.conds.CONDRegular(mask)
        width, height = kwargs.get("width"), kwargs.get("height")
        if width is not None and height is not None:  # core CLIPTextEncodePixArtAlpha's micro-conditions
            out["c_size"] = comfy.conds.CONDRegular(torch.FloatTensor([[height, width]]))
            out["c_ar"] = comfy.conds.CONDRegular(torch.FloatTensor([[kwargs.get("aspect_ratio", height / width)]]))
        return out


class _PixArtBase(comfy.supported_models_base.BASE):
    unet_config = {}
    unet_extra_config = {}
    sampling_settings = {"beta_schedule": "sqrt_linear", "linear_start": 1e-4, "linear_end": 0.02, "timesteps": 1000}
    memory_usage_factor = MEMORY_USAGE_FACTOR
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]

    def get_model(self, state_dict, prefix="", device=None):
        return PixArtModel(self, device=device).eval()


class PixArtSigmaConfig(_PixArtBase):
    latent_format = comfy.latent_formats.SDXL


class PixArtAlphaConfig(_PixArtBase):
    latent_format = comfy.latent_formats.SD15


WEIGHT_DTYPES = {
    "default": {},
    "fp32": {"dtype": torch.float32},
    "bf16": {"dtype": torch.bfloat16},
    "fp16": {"dtype": torch.float16},
    "fp8_e4m3fn": {"dtype": torch.float8_e4m3fn},
    "fp8_e4m3fn_fast": {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True},
    "fp8_e5m2": {"dtype": torch.float8_e5m2},
}


def build_patcher(weights: DiTWeights, weight_dtype: str = "default") -> comfy.model_patcher.ModelPatcher:
    """Wrap loaded weights into a ComfyUI ModelPatcher, letting ComfyUI choose dtypes and devices."""
    options = WEIGHT_DTYPES[weight_dtype]
    config_class = PixArtAlphaConfig if weights.config.family == ALPHA else PixArtSigmaConfig
    # depth and hidden_size are what ComfyUI's PixArt LoRA key mapping reads.
    model_config = config_class({"dit_config": weights.config, "depth": weights.config.depth,
                                 "hidden_size": weights.config.hidden_size})
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    state_dict = weights.state_dict
    parameters = sum(t.numel() for t in state_dict.values())
    stored_dtype = next(iter(state_dict.values())).dtype
    unet_dtype = options.get("dtype") or comfy.model_management.unet_dtype(
        model_params=parameters, supported_dtypes=list(model_config.supported_inference_dtypes), weight_dtype=stored_dtype)
    manual_cast = comfy.model_management.unet_manual_cast(unet_dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(unet_dtype, manual_cast)
    if options.get("fp8_optimizations"):
        model_config.optimizations["fp8"] = True
    model = model_config.get_model(state_dict).to(offload_device)
    missing, unexpected = model.diffusion_model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights.source}: weights do not fit the detected model ({weights.config.describe()}): "
                         f"missing {missing[:6]}, unexpected {unexpected[:6]}.")
    log.info("PixArt DiT %s: %s, weights %s, compute %s", weights.source, weights.config.describe(), unet_dtype,
             manual_cast or unet_dtype)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
    caption_cache.install(patcher)
    return patcher


def load_dit_patcher(path: str, weight_dtype: str = "default") -> comfy.model_patcher.ModelPatcher:
    return build_patcher(read_dit_weights(path), weight_dtype)
