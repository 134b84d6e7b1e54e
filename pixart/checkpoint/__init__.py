"""Load any published PixArt DiT checkpoint layout into the engine's model."""
from __future__ import annotations

import os

import torch

from ..config import DiTConfig
from .detect import detect_config
from .errors import CheckpointError, require_fit
from .files import LoadedTensors, read_checkpoint, stored_dtype
from .layouts import IGNORED_ORIGINAL, to_internal
from .quantization import quantization_layout

__all__ = ["CheckpointError", "DiTWeights", "read_dit_weights", "load_dit"]


class DiTWeights:
    """An internal-layout state dict with its detected configuration.

    `quantization` names ComfyUI's quantized layout when the file has one (see checkpoint.quantization); its
    extra tensors stay in the state dict for the host's casting ops, and `metadata` keeps the file's header.
    """

    def __init__(self, state_dict: dict[str, torch.Tensor], config: DiTConfig, layout: str, source: str,
                 metadata: dict[str, str] | None = None):
        self.state_dict = state_dict
        self.config = config
        self.layout = layout
        self.source = source
        self.metadata = metadata or {}
        self.quantization = quantization_layout(state_dict, self.metadata)

    def stored_dtype(self) -> torch.dtype:
        return stored_dtype(self.state_dict)


def read_dit_weights(path: str) -> DiTWeights:
    """File or diffusers folder -> DiTWeights (tensors keep their stored dtype, fp8 included)."""
    loaded: LoadedTensors = read_checkpoint(path, component="transformer")
    source = os.path.basename(os.path.normpath(path))
    tensors, layout = to_internal(loaded.state_dict, source)
    config = detect_config(tensors, source, loaded.config, loaded.pipeline_class)
    for name in IGNORED_ORIGINAL:
        tensors.pop(name, None)
    return DiTWeights(tensors, config, layout, source, loaded.metadata)


def load_dit(path: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", **model_kwargs):
    """Build a PixArtDiT from a checkpoint path and load its weights (strictly: every weight must match)."""
    from ..dit import PixArtDiT

    weights = read_dit_weights(path)
    model = PixArtDiT(weights.config, dtype=dtype, device=device, **model_kwargs)
    load_weights(model, weights)
    return model


def load_weights(model: torch.nn.Module, weights: DiTWeights) -> None:
    """Copy weights into a built model; missing or unexpected names are a CheckpointError."""
    if weights.quantization:
        raise CheckpointError(f"{weights.source} is quantized ({weights.quantization}); only ComfyUI's casting ops "
                              "read it. Load it with the PixArt DiT Loader inside ComfyUI.")
    result = model.load_state_dict(weights.state_dict, strict=False)
    require_fit(weights.source, f"the detected model ({weights.config.describe()})", result.missing_keys,
                result.unexpected_keys)
