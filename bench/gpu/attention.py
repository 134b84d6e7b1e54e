"""Section attention: the attention kernels one forward ran (torch profiler) and torch's SDPA backend switches."""
from __future__ import annotations

import logging

import torch

from .harness import Harness

log = logging.getLogger("gpu_harness")
KEYWORDS = ("flash", "attention", "fmha", "sdpa", "cudnn", "efficient")
BACKENDS = {"flash": "_flash_attention", "mem_efficient": "_efficient_attention", "cudnn": "_cudnn_attention",
            "math": "_attention_math"}


def attention(h: Harness) -> dict:
    px = min(h.args.sizes)
    caption = h.encode(h.ours, h.dtype)
    x, t = h.cfg_batch(px, h.dtype), h.timesteps()
    h.ours(x, t, None, caption=caption)  # warm-up outside the profile
    h.synchronize()
    return {"px": px, **profile_attention(lambda: h.ours(x, t, None, caption=caption), h)}


def profile_attention(forward, h: Harness) -> dict:
    """Profile one forward and keep the events whose names show an attention kernel or SDPA backend."""
    from torch.profiler import ProfilerActivity, profile

    cuda = h.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        forward()
        h.synchronize()
    events = []
    for event in prof.key_averages():
        if any(word in event.key.lower() for word in KEYWORDS):
            events.append({"name": event.key[:200], "count": event.count, "cpu_total_us": event.cpu_time_total,
                           "device_total_us": getattr(event, "device_time_total", None)
                           or getattr(event, "cuda_time_total", 0.0)})  # torch < 2.4 names it cuda_time_total
    events.sort(key=lambda e: (e["device_total_us"], e["cpu_total_us"]), reverse=True)
    used = sorted(name for name, op in BACKENDS.items() if any(op in e["name"] for e in events))
    result = {"events": events, "sdpa_backends_used": used, "profiled": "CPU + CUDA" if cuda else "CPU"}
    if cuda:
        result["sdp_enabled"] = {"flash": torch.backends.cuda.flash_sdp_enabled(),
                                 "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                                 "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
                                 "math": torch.backends.cuda.math_sdp_enabled()}
    log.info("attention: SDPA backends %s; top events %s", used, [e["name"] for e in events[:4]])
    return result
