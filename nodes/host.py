"""What differs between the ComfyUI versions we support (0.3.64 to v0.33), detected by feature, never by version.

- The patcher class: `CoreModelPatcher` where the host has one (ModelPatcherDynamic when dynamic VRAM is on),
  else `ModelPatcher`; a `disable_dynamic` request always gets the plain `ModelPatcher`.
- Weight loading: the host's `BaseModel.load_model_weights`, assigning the given tensors when the patcher is
  dynamic and the host's loader takes `assign`. Since dynamic VRAM (comfy-aimdo) builds lazy layers that keep the
  tensors they are given, every tensor is first cast to the storage dtype the user chose.
- Quantized files: ComfyUI v0.5+ reads legacy scaled fp8 and mixed-precision files as per-layer `comfy_quant`
  (comfy.utils.convert_old_quants / detect_layer_quantization -> mixed-precision ops); older hosts read only
  legacy scaled fp8, through the `scaled_fp8` model config / model option.
- Node schemas: `search_aliases` (the words the node search also matches, v0.33's io.Schema) is passed only where the
  host's Schema has the field; older hosts get the schema without it.
"""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass

import comfy.model_patcher
import comfy.utils
import torch
from comfy_api.latest import io

from ..pixart.checkpoint.errors import CheckpointError
from ..pixart.checkpoint.quantization import LEGACY_MARKER, MIXED_PRECISION, is_quantization_key

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
NEWER_SCHEMA_FIELDS = ("search_aliases",)  # io.Schema fields some supported hosts lack


def schema(**fields) -> io.Schema:
    """io.Schema(**fields) without the newer fields this host's Schema does not have."""
    known = {field.name for field in dataclasses.fields(io.Schema)}
    return io.Schema(**{name: value for name, value in fields.items()
                        if name in known or name not in NEWER_SCHEMA_FIELDS})


def accepts(function, name: str) -> bool:
    """Whether a host function takes the keyword `name`."""
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def patcher_class(disable_dynamic: bool = False):
    core = getattr(comfy.model_patcher, "CoreModelPatcher", None)
    return comfy.model_patcher.ModelPatcher if disable_dynamic or core is None else core


def is_dynamic(patcher) -> bool:
    check = getattr(patcher, "is_dynamic", None)
    return bool(check is not None and check())


def clone_without_dynamic(patcher):
    """A clone that can be compiled or hooked: non-dynamic where the host distinguishes (core's TorchCompileModel
    does the same), a plain clone on hosts without dynamic VRAM."""
    if accepts(patcher.clone, "disable_dynamic"):
        return patcher.clone(disable_dynamic=True)
    return patcher.clone()


def build_clip(target, state_dict: dict[str, torch.Tensor], disable_dynamic: bool = False, **kwargs):
    """comfy.sd.CLIP loaded with `state_dict` the way the host's own text-encoder loader does: through the
    constructor where it takes the weights (so they are in place before it loads the model to the device,
    which quantized and dynamic layers need), else right after construction."""
    import comfy.sd

    init = comfy.sd.CLIP.__init__
    if disable_dynamic and accepts(init, "disable_dynamic"):
        kwargs["disable_dynamic"] = True
    if accepts(init, "state_dict"):
        return comfy.sd.CLIP(target, state_dict=[state_dict], **kwargs)
    clip = comfy.sd.CLIP(target, **kwargs)
    clip.load_sd(state_dict)
    return clip


@dataclass(frozen=True)
class HostQuantization:
    """How the host's ops are configured for a quantized file."""

    mixed_precision: dict | None = None  # the host's quant_config (v0.5+): layers carry comfy_quant entries
    scaled_fp8: torch.dtype | None = None  # legacy hosts: fp8 dtype of the scaled layers
    fp8_matrix_mult: bool = False  # legacy hosts: the marker asks for fp8 matmul where the GPU has it

    @property
    def quantized(self) -> bool:
        return self.mixed_precision is not None or self.scaled_fp8 is not None

    def configure_model(self, model_config) -> None:
        """DiT: the model config fields from which BaseModel picks its operations."""
        if self.mixed_precision is not None:
            model_config.quant_config = self.mixed_precision
        if self.scaled_fp8 is not None:
            model_config.scaled_fp8 = self.scaled_fp8
            model_config.optimizations["fp8"] = self.fp8_matrix_mult

    def model_options(self) -> dict:
        """Text encoder: the model options from which sd1_clip picks its operations."""
        if self.mixed_precision is not None:
            return {"quantization_metadata": self.mixed_precision}
        if self.scaled_fp8 is not None:
            return {"scaled_fp8": self.scaled_fp8}
        return {}


def host_quantization(state_dict: dict[str, torch.Tensor], metadata: dict[str, str], layout: str | None,
                      source: str) -> tuple[dict[str, torch.Tensor], HostQuantization]:
    """The state dict in the form this host's ops read, and how to configure them. `layout` is
    pixart.checkpoint.quantization's name for the file's layout (None: not quantized)."""
    if layout is None:
        return state_dict, HostQuantization()
    convert = getattr(comfy.utils, "convert_old_quants", None)
    detect = getattr(comfy.utils, "detect_layer_quantization", None)
    if convert is not None and detect is not None:
        state_dict, _ = convert(state_dict, "", metadata=dict(metadata))
        return state_dict, HostQuantization(mixed_precision=detect(state_dict, ""))
    if layout == MIXED_PRECISION:
        raise CheckpointError(
            f"{source} uses ComfyUI's mixed-precision quantization (comfy_quant), which this ComfyUI cannot read. "
            "Update ComfyUI, or use an unquantized or scaled-fp8 file.")
    marker = state_dict.pop(LEGACY_MARKER)
    dtype = torch.float8_e4m3fn if marker.dtype == torch.float32 else marker.dtype
    return state_dict, HostQuantization(scaled_fp8=dtype, fp8_matrix_mult=marker.numel() != 2)


def refuse_fp8_on_quantized(quantization: HostQuantization, dtype: torch.dtype | None, input_name: str,
                            source: str) -> None:
    if quantization.quantized and dtype in FP8_DTYPES:
        raise CheckpointError(f"{source} is already quantized; set {input_name} to 'default' (or fp16/bf16/fp32, the "
                              "dtype its unquantized layers use) instead of an fp8 choice.")


def cast_for_storage(state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every floating-point tensor in the storage dtype the layers are built in (what copying into built layers
    does; dynamic VRAM's lazy layers keep the tensors they are given). Only for files that are not quantized."""
    for key, tensor in state_dict.items():
        if tensor.is_floating_point() and tensor.dtype != dtype:
            state_dict[key] = tensor.to(dtype)
    return state_dict


def unused_weights(missing: list[str], unexpected: list[str]) -> tuple[list[str], list[str]]:
    """Missing and unexpected keys that matter: optional quantization parameters the host creates with defaults
    (e.g. an fp8 layer's input scale) are not missing weights."""
    return [k for k in missing if not is_quantization_key(k)], list(unexpected)


def load_model_weights(model, state_dict: dict[str, torch.Tensor], patcher) -> tuple[list[str], list[str]]:
    """The host's own BaseModel.load_model_weights (which only logs what did not fit); returns (missing,
    unexpected), read with torch's load_state_dict post hook on the diffusion model."""
    seen = []
    handle = model.diffusion_model.register_load_state_dict_post_hook(
        lambda module, keys: seen.append((list(keys.missing_keys), list(keys.unexpected_keys))))
    try:
        if accepts(model.load_model_weights, "assign"):
            model.load_model_weights(state_dict, "", assign=is_dynamic(patcher))
        else:
            model.load_model_weights(state_dict, "")
    finally:
        handle.remove()
    return unused_weights(*seen[-1]) if seen else ([], [])
