"""Section dtype: s/step at the smallest size with bf16, fp16 and fp8_e4m3fn weights (fp8 computed in bf16), each
figure labelled with the layer classes it ran on (casting.py: ComfyUI's own ops, or a stand-in)."""
from __future__ import annotations

import logging

import torch

from .harness import Harness
from .inputs import BYTES_PER_GB, weight_bytes

log = logging.getLogger("gpu_harness")


def dtype(h: Harness) -> dict:
    px = min(h.args.sizes)
    result = {"px": px, "casting": h.casting.describe()}
    variants = [("bf16", torch.bfloat16, torch.bfloat16), ("fp16", torch.float16, torch.float16)]
    fp8 = getattr(torch, "float8_e4m3fn", None)
    reason = "this torch has no float8_e4m3fn" if fp8 is None else h.casting.unsupported(fp8, torch.bfloat16)
    if reason:
        result["fp8_e4m3fn"] = {"skipped": reason}
    else:
        variants.append(("fp8_e4m3fn", fp8, torch.bfloat16))
    for name, storage, compute in variants:
        model, casting = h.casting.build(h.ours, storage, compute)
        entry = h.step_time(f"{name} {h.casting.tag}", model, px, dtype=compute)
        result[name] = {**entry, "weights_gb": weight_bytes(model) / BYTES_PER_GB,
                        "compute_dtype": str(compute).replace("torch.", ""), "casting": casting}
        log.info("dtype  %5d px %-10s %9.4f s/step, weights %.3f GB, casting: %s", px, name, entry["s_per_step"],
                 result[name]["weights_gb"], casting)
        del model
        h.free_memory()
    return result
