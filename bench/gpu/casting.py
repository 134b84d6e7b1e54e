"""The layer classes the dtype figures run on. With ComfyUI importable (COMFYUI_PATH, or the pack in its
custom_nodes): ComfyUI's own ops, as its loader picks them (comfy.ops.pick_operations: manual_cast for fp8 weights
computed in bf16, whose Linear casts each weight per layer), every floating-point tensor stored in the weight dtype
as the nodes store it. Without ComfyUI: plain torch, and bench/gpu/standin_ops.py for fp8; those figures are
labelled stand-ins, since they do not time what users run."""
from __future__ import annotations

import torch
from torch import nn

from bench.fixtures.pack import comfyui_path, import_comfy
from pixart_sigma_nodes.pixart.dit import PixArtDiT

from . import standin_ops

STANDIN_CAST = "stand-in (bench/gpu/standin_ops.py), not ComfyUI's ops"
STANDIN_PLAIN = "stand-in (torch.nn, no cast), not ComfyUI's ops"


class Casting:
    def __init__(self, device: torch.device):
        self.device = device
        self.comfyui = comfyui_path()
        self.ops = None
        if self.comfyui:
            import_comfy(self.comfyui, cpu=device.type == "cpu")
            import comfy.ops

            self.ops = comfy.ops

    @property
    def tag(self) -> str:
        """A short name of the layer classes, for log columns and memo keys."""
        return "stand-in" if self.ops is None else "comfy.ops"

    def describe(self) -> str:
        if self.ops is None:
            return "stand-in: ComfyUI not importable (set COMFYUI_PATH); plain torch, bench/gpu/standin_ops.py for fp8"
        return f"ComfyUI's own ops (comfy.ops.pick_operations), ComfyUI at {self.comfyui}"

    def unsupported(self, storage: torch.dtype, compute: torch.dtype) -> str | None:
        """None when weights stored in `storage` can be cast to `compute` here, else why not."""
        return standin_ops.storage_supported(storage, compute, self.device)

    def build(self, model: PixArtDiT, storage: torch.dtype, compute: torch.dtype) -> tuple[PixArtDiT, str]:
        """Our DiT with `model`'s weights stored in `storage`, computing in `compute`. -> (model, casting label)"""
        if self.ops is not None:
            ops = self.ops.pick_operations(storage, compute, load_device=self.device)
            state = {key: value.to(storage) if value.is_floating_point() else value
                     for key, value in model.state_dict().items()}  # as nodes/host.py cast_for_storage
            return self.load(model, state, ops, storage), f"comfy.ops.{ops.__name__}"
        if storage == compute:
            return self.load(model, model.state_dict(), nn, compute), STANDIN_PLAIN
        copy = self.load(model, model.state_dict(), standin_ops, compute)
        standin_ops.store_weights(copy, storage)
        return copy, STANDIN_CAST

    def load(self, model: PixArtDiT, state: dict, operations, dtype: torch.dtype) -> PixArtDiT:
        copy = PixArtDiT(model.config, operations=operations, dtype=dtype, device=self.device).eval()
        copy.load_state_dict(state)
        return copy
