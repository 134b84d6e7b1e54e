"""Loading PixArt weights into the host: the weight dtype choices, the storage and compute dtypes the host would pick,
and the DiT built and loaded as ComfyUI's own diffusion-model loader does (comfy.sd.load_diffusion_model_state_dict,
which cannot be called for this network: it detects PixArt as core's own PixArtMS). The decisions are the host's own
functions (unet_dtype, unet_manual_cast, the patcher class, load_model_weights); tests/host/test_host_untouched.py
pins their use to core's loader on both hosts.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import comfy.model_management
import torch

from ..pixart.checkpoint import DiTWeights, read_dit_weights
from ..pixart.checkpoint.errors import require_fit
from ..pixart.checkpoint.quantization import is_quantization_key
from ..pixart.config import ALPHA
from . import caption_cache, host
from .dit_model import PixArtAlphaConfig, PixArtSigmaConfig

log = logging.getLogger(__name__)

WEIGHT_DTYPES = {
    "default": {},
    "fp32": {"dtype": torch.float32},
    "bf16": {"dtype": torch.bfloat16},
    "fp16": {"dtype": torch.float16},
    "fp8_e4m3fn": {"dtype": torch.float8_e4m3fn},
    "fp8_e4m3fn_fast": {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True},
    "fp8_e5m2": {"dtype": torch.float8_e5m2},
}
SUPPORTED_COMPUTE = [torch.float16, torch.bfloat16, torch.float32]


@dataclass(frozen=True)
class StoragePlan:
    """What the host picks for a model's weights: the dtype every layer stores, the dtype it computes in when that
    differs (manual cast), fp8 matrix multiplication, and the devices."""

    storage: torch.dtype
    manual_cast: torch.dtype | None
    fp8_matmul: bool
    load_device: torch.device
    offload_device: torch.device


def storage_plan(weight_dtype: str, state_dict: dict[str, torch.Tensor], stored_dtype: torch.dtype | None,
                 quantization: host.HostQuantization | None = None,
                 supported: list[torch.dtype] = SUPPORTED_COMPUTE) -> StoragePlan:
    """The host's choice for a file of `stored_dtype` (None: quantized) under the user's weight_dtype choice, as its
    diffusion-model loader makes it."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype '{weight_dtype}' is unknown; choose one of: {', '.join(WEIGHT_DTYPES)}.")
    options = WEIGHT_DTYPES[weight_dtype]
    load_device = comfy.model_management.get_torch_device()
    parameters = sum(t.numel() for k, t in state_dict.items() if not is_quantization_key(k))
    storage = options.get("dtype") or comfy.model_management.unet_dtype(
        model_params=parameters, supported_dtypes=list(supported), weight_dtype=stored_dtype)
    cast_from = None if quantization is not None and quantization.mixed_precision is not None else storage
    manual_cast = comfy.model_management.unet_manual_cast(cast_from, load_device, supported)
    return StoragePlan(storage, manual_cast, bool(options.get("fp8_optimizations")), load_device,
                       comfy.model_management.unet_offload_device())


def host_model(model_config, state_dict: dict, quantization: host.HostQuantization, stored_dtype, weight_dtype: str,
               source: str, describe: str, disable_dynamic: bool = False):
    """Build `model_config`'s model and load `state_dict` into the host's patcher the way its own diffusion-model loader
    does, letting ComfyUI choose compute dtype, casting ops, devices and offloading; the chosen storage dtype is what
    every layer holds. Weights that do not fit are a CheckpointError naming `source`. -> the patcher"""
    host.refuse_fp8_on_quantized(quantization, WEIGHT_DTYPES.get(weight_dtype, {}).get("dtype"), "weight_dtype", source)
    plan = storage_plan(weight_dtype, state_dict, stored_dtype, quantization, model_config.supported_inference_dtypes)
    quantization.configure_model(model_config)
    if host.accepts(model_config.set_inference_dtype, "device"):  # as the host's loader calls it, where it takes one
        model_config.set_inference_dtype(plan.storage, plan.manual_cast, device=plan.load_device)
    else:
        model_config.set_inference_dtype(plan.storage, plan.manual_cast)
    if plan.fp8_matmul:
        model_config.optimizations["fp8"] = True
    model = model_config.get_model(state_dict)
    patcher = host.patcher_class(disable_dynamic)(model, load_device=plan.load_device,
                                                  offload_device=plan.offload_device)
    if not comfy.model_management.is_device_cpu(plan.offload_device):
        model.to(plan.offload_device)
    if not quantization.quantized:
        host.cast_for_storage(state_dict, plan.storage)
    require_fit(source, f"the detected model ({describe})", *host.load_model_weights(model, state_dict, patcher))
    log.info("Loaded %s: %s, weights %s%s, compute %s", source, describe, plan.storage,
             " (quantized)" if quantization.quantized else "", plan.manual_cast or plan.storage)
    return patcher


def build_patcher(weights: DiTWeights, weight_dtype: str = "default", disable_dynamic: bool = False):
    """Wrap loaded DiT weights into the host's patcher (host_model), with the per-run caption cache installed."""
    state_dict, quantization = host.host_quantization(weights.state_dict, weights.metadata, weights.quantization,
                                                      weights.source)
    config_class = PixArtAlphaConfig if weights.config.family == ALPHA else PixArtSigmaConfig
    # depth and hidden_size: what core's LoRA key map for PixArt reads from unet_config
    model_config = config_class({"dit_config": weights.config, "depth": weights.config.depth,
                                 "hidden_size": weights.config.hidden_size})
    stored_dtype = None if quantization.quantized else weights.stored_dtype()
    patcher = host_model(model_config, state_dict, quantization, stored_dtype, weight_dtype,
                         weights.source, weights.config.describe(), disable_dynamic)
    caption_cache.install(patcher)
    return patcher


def load_dit_patcher(path: str, weight_dtype: str = "default", disable_dynamic: bool = False):
    """A PixArt DiT file or diffusers folder -> the host's patcher. Registered as the patcher's
    cached_patcher_init, the factory ComfyUI calls for multi-GPU deep clones and non-dynamic delegates."""
    patcher = build_patcher(read_dit_weights(path), weight_dtype, disable_dynamic=disable_dynamic)
    patcher.cached_patcher_init = (load_dit_patcher, (path, weight_dtype))
    return patcher
