"""Sections step, image, kv and compile: our DiT's s/step and s/image at each size, KV compression's speedups, and
torch.compile'd blocks."""
from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

from bench.fixtures.timing import measure
from pixart_sigma_nodes.pixart.dit import PixArtDiT
from pixart_sigma_nodes.pixart.kv_compress import KVCompress, default_layers

from .harness import Harness

log = logging.getLogger("gpu_harness")
COMPILE_RESERVE_S = 120.0  # compiling 28 blocks and timing them


def step(h: Harness) -> dict:
    return {str(px): h.step_time(h.dtype_name, h.ours, px) for px in h.args.sizes}


def image(h: Harness) -> dict:
    return {str(px): h.image_time(h.dtype_name, h.ours, px) for px in h.args.sizes}


def kv(h: Harness) -> dict:
    depth = h.ours.config.depth
    settings = {f"deep_half_{depth // 2}-{depth - 1}": default_layers(depth),
                f"all_0-{depth - 1}": frozenset(range(depth))}
    result = {"ratio": 2, "mode": "avg"}
    for px in [size for size in h.args.sizes if size >= 2048]:
        off = h.step_time(h.dtype_name, h.ours, px)
        result[str(px)] = {"off": off}
        for name, layers in settings.items():
            entry = h.step_time(f"kv2x2 {name}", h.ours, px, KVCompress(2, layers, "avg"))
            result[str(px)][name] = {**entry, "speedup_vs_off": off["s_per_step"] / entry["s_per_step"]}
    if 4096 in h.args.sizes:
        all_layers = KVCompress(2, frozenset(range(depth)), "avg")
        result["image_4096_all_layers"] = h.image_time(f"kv2x2 all_0-{depth - 1}", h.ours, 4096, all_layers)
    return result


@contextlib.contextmanager
def compiled_blocks(model: PixArtDiT):
    """Each block wrapped by torch.compile (sharing its parameters) while the context is open."""
    original = model.blocks
    model.blocks = nn.ModuleList(torch.compile(block) for block in original)
    try:
        yield
    finally:
        model.blocks = original


def compiled(h: Harness) -> dict:
    if h.remaining() < COMPILE_RESERVE_S:
        return {"skipped": f"compiling needs ~{COMPILE_RESERVE_S:.0f} s; {h.remaining():.0f} s of budget left"}
    px = min(h.args.sizes)
    eager = h.step_time(h.dtype_name, h.ours, px)
    caption = h.encode(h.ours, h.dtype)
    x, t = h.cfg_batch(px, h.dtype), h.timesteps()
    with compiled_blocks(h.ours):
        compile_s, _ = measure(lambda: h.ours(x, t, None, caption=caption), h.synchronize)
        log.info("compile %4d px first call (compiling) %.1f s", px, compile_s)
        entry = h.step_time(f"{h.dtype_name} compiled", h.ours, px)
    return {"px": px, "mode": "default", "first_call_s": compile_s, **entry,
            "speedup_vs_eager": eager["s_per_step"] / entry["s_per_step"]}
