"""Load PixArt ControlNet checkpoints: detect the layout from the weights, convert to the internal (official) names.

Layouts:
- official: the PixArt-alpha repository's ControlPixArtHalf / ControlPixArtMSHalf state dict
  (PixArt-XL-2-1024-ControlNet.pth, PixArt-XL-2-512-ControlNet.pth): `controlnet.N.copied_block.*`,
  `controlnet.0.before_proj.*`, `controlnet.N.after_proj.*`, usually with the frozen base model beside it as
  `base_model.*`. That base copy is read as evidence of the family and size the ControlNet was trained on; the
  PixArt DiT Loader loads it from the same file.
- diffusers adapter: PixArtControlNetAdapterModel of diffusers' examples/research_projects/pixart (not part of the
  diffusers package): `controlnet_blocks.N.before_proj.*` (N = 0), `controlnet_blocks.N.after_proj.*`,
  `controlnet_blocks.N.transformer_block.*` (BasicTransformerBlock names, converted like the DiT's blocks).
"""
from __future__ import annotations

import logging
import os
import re

import torch

from ..config import HEAD_DIM, DiTConfig
from .detect import detect_config
from .errors import CheckpointError, require_fit
from .files import read_checkpoint, stored_dtype
from .layouts import IGNORED_ORIGINAL, describe_lookalike, diffusers_to_internal, to_internal

log = logging.getLogger(__name__)

OFFICIAL = "official"
DIFFUSERS_ADAPTER = "diffusers adapter"

_ANCHORS = {OFFICIAL: "controlnet.0.after_proj.weight", DIFFUSERS_ADAPTER: "controlnet_blocks.0.after_proj.weight"}
_UNET_CONTROLNET = ("input_hint_block.0.weight", "controlnet_cond_embedding.conv_in.weight", "zero_convs.0.0.weight",
                    "controlnet_down_blocks.0.weight")
_PIXART_DIT = ("t_block.1.weight", "adaln_single.linear.weight")


class ControlNetWeights:
    """An internal-layout ControlNet state dict (`controlnet.*`) with its configuration."""

    def __init__(self, state_dict: dict[str, torch.Tensor], config, layout: str, source: str):
        self.state_dict = state_dict
        self.config = config
        self.layout = layout
        self.source = source

    def stored_dtype(self) -> torch.dtype:
        return stored_dtype(self.state_dict)


def _find(keys, anchor: str) -> str | None:
    for key in keys:
        if key == anchor or key.endswith("." + anchor):
            return key[: -len(anchor)]
    return None


def _not_a_controlnet(state_dict: dict[str, torch.Tensor], source: str) -> CheckpointError:
    keys = list(state_dict)
    if any(any(key.endswith(needle) for key in keys) for needle in _UNET_CONTROLNET):
        return CheckpointError(
            f"{source} is not a PixArt ControlNet: it looks like a ControlNet for Stable Diffusion UNet models "
            "(SD1.5/SDXL: input_hint_block / controlnet_cond_embedding weights). Load it with core 'Load ControlNet "
            "Model' for an SD model; for PixArt use a PixArt ControlNet such as PixArt-XL-2-1024-ControlNet.pth.")
    if any(any(key.endswith(needle) for key in keys) for needle in _PIXART_DIT):
        return CheckpointError(
            f"{source} is a PixArt DiT without ControlNet blocks (no controlnet.N.after_proj weights); load it with "
            "the PixArt DiT Loader (diffusion_models folder).")
    return CheckpointError(f"{source} is not a PixArt ControlNet: {describe_lookalike(state_dict)}")


def _block_indices(keys, pattern: str, source: str) -> list[int]:
    indices = sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})
    if indices != list(range(len(indices))):
        missing = sorted(set(range(max(indices) + 1)) - set(indices))
        raise CheckpointError(f"{source}: ControlNet blocks {missing} are missing; download the file again.")
    return indices


def _official(tensors: dict[str, torch.Tensor], source: str):
    control = {k: v for k, v in tensors.items() if k.startswith("controlnet.")}
    base = {k[len("base_model."):]: v for k, v in tensors.items() if k.startswith("base_model.")}
    other = sorted(set(tensors) - set(control) - {f"base_model.{k}" for k in base})
    if other:
        raise CheckpointError(f"{source}: {len(other)} tensors belong to neither the ControlNet nor its base model "
                              f"({', '.join(other[:6])}); it is not a PixArt ControlNet file as published.")
    return control, base


def _diffusers_adapter(tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    remaining = dict(tensors)
    for index in _block_indices(remaining, r"controlnet_blocks\.(\d+)\.", source):
        src = f"controlnet_blocks.{index}."
        for name in ("before_proj", "after_proj"):
            for kind in ("weight", "bias"):
                key = f"{src}{name}.{kind}"
                if key in remaining:
                    out[f"controlnet.{index}.{name}.{kind}"] = remaining.pop(key)
        inner = src + "transformer_block."
        block = {f"transformer_blocks.0.{k[len(inner):]}": remaining.pop(k) for k in list(remaining) if k.startswith(inner)}
        for key, tensor in diffusers_to_internal(block, source).items():
            out[key.replace("blocks.0.", f"controlnet.{index}.copied_block.", 1)] = tensor
    if remaining:
        raise CheckpointError(f"{source}: {len(remaining)} tensors have no place in a PixArt ControlNet adapter "
                              f"({', '.join(sorted(remaining)[:6])}).")
    return out


def _config(control: dict[str, torch.Tensor], base: DiTConfig | None, source: str):
    from ..controlnet import ControlNetConfig

    depth = len(_block_indices(control, r"controlnet\.(\d+)\.", source))
    needed = ("controlnet.0.after_proj.weight", "controlnet.0.before_proj.weight",
              "controlnet.0.copied_block.mlp.fc1.weight")
    missing = [key for key in needed if key not in control]
    if missing:
        raise CheckpointError(f"{source}: incomplete PixArt ControlNet (missing {missing}); download it again.")
    hidden = control["controlnet.0.after_proj.weight"].shape[0]
    mlp_hidden = control["controlnet.0.copied_block.mlp.fc1.weight"].shape[0]
    heads = base.num_heads if base is not None else hidden // HEAD_DIM
    if base is None and hidden % HEAD_DIM:
        raise CheckpointError(f"{source}: hidden width {hidden} is not a multiple of PixArt's head width {HEAD_DIM}.")
    return ControlNetConfig(hidden_size=hidden, num_heads=heads, mlp_hidden=mlp_hidden, depth=depth,
                            qk_norm="controlnet.0.copied_block.attn.q_norm.weight" in control, base=base)


def read_controlnet_weights(path: str) -> ControlNetWeights:
    """A ControlNet file (or diffusers folder) -> ControlNetWeights; any other model is a CheckpointError naming it."""
    loaded = read_checkpoint(path, component="controlnet")
    source = os.path.basename(os.path.normpath(path))
    state_dict = loaded.state_dict
    found = [(layout, prefix) for layout, anchor in _ANCHORS.items()
             if (prefix := _find(state_dict, anchor)) is not None]
    if not found:
        raise _not_a_controlnet(state_dict, source)
    layout, prefix = found[0]
    outside = sorted(k for k in state_dict if not k.startswith(prefix))
    if outside:
        raise CheckpointError(f"{source}: {len(outside)} tensors lie outside the ControlNet ({', '.join(outside[:6])}).")
    tensors = {k[len(prefix):]: v for k, v in state_dict.items()}
    base_config = None
    if layout == OFFICIAL:
        control, base = _official(tensors, source)
        if base:
            internal, _ = to_internal(base, f"{source} (its base model)")
            base_config = detect_config(internal, f"{source} (its base model)")
            log.info("%s carries its base model (%d tensors, %s), read as evidence only: load the base with the "
                     "PixArt DiT Loader (it reads this same file).", source, len(base), base_config.describe())
        control = {k: v for k, v in control.items() if k not in IGNORED_ORIGINAL}
    else:
        control = _diffusers_adapter(tensors, source)
    config = _config(control, base_config, source)
    log.info("%s: %s (%s layout)", source, config.describe(), layout)
    return ControlNetWeights(control, config, layout, source)


def load_controlnet(path: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Build a PixArtControlNet from a file and load its weights strictly (missing or unused weights are an error)."""
    from ..controlnet import PixArtControlNet

    weights = read_controlnet_weights(path)
    model = PixArtControlNet(weights.config, dtype=dtype, device=device)
    result = model.load_state_dict(weights.state_dict, strict=False)
    require_fit(weights.source, f"the detected ControlNet ({weights.config.describe()})", result.missing_keys,
                result.unexpected_keys)
    return model
