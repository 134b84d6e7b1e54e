"""Section memory: peak VRAM of a 20-step image at the smallest size with only our DiT on the GPU (T5 offloaded)."""
from __future__ import annotations

import logging

import torch

from .harness import Harness, finite
from .inputs import BYTES_PER_GB, weight_bytes

log = logging.getLogger("gpu_harness")


def memory(h: Harness) -> dict:
    if h.device.type != "cuda":
        return {"skipped": "n/a on cpu"}
    px = min(h.args.sizes)
    h.free_memory()
    torch.cuda.reset_peak_memory_stats(h.device)
    resident = torch.cuda.memory_allocated(h.device)
    latent = h.sample(h.ours, px)
    h.synchronize()
    result = {"px": px, "unit": "GB = 1e9 bytes",
              "peak_gb": torch.cuda.max_memory_allocated(h.device) / BYTES_PER_GB,
              "peak_reserved_gb": torch.cuda.max_memory_reserved(h.device) / BYTES_PER_GB,
              "resident_before_gb": resident / BYTES_PER_GB,
              "weights_gb": weight_bytes(h.ours) / BYTES_PER_GB, "finite": finite(latent),
              "what": "20-step CFG sampling incl. caption encoding; only our DiT on the GPU (no T5, no VAE)"}
    log.info("memory %5d px peak %.2f GB allocated (%.2f GB reserved), weights %.2f GB", px, result["peak_gb"],
             result["peak_reserved_gb"], result["weights_gb"])
    return result
