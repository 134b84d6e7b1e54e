"""The GPU harness's state (arguments, device, the random-weight models, caption inputs, scheduler, time budget,
results so far) and the two measurements the sections build on: s/step with CFG and 20-step s/image."""
from __future__ import annotations

import argparse
import gc
import logging
import time

import torch

from bench.fixtures.models import random_pair
from bench.fixtures.sampling import GUIDANCE, STEPS, sample
from bench.fixtures.schedulers import PIXART_SIGMA, pixart_sigma_scheduler
from bench.fixtures.timing import Timings, interleaved
from pixart_sigma_nodes.pixart.dit import PixArtDiT
from pixart_sigma_nodes.pixart.kv_compress import KVCompress

from .casting import Casting
from .inputs import (
    BYTES_PER_GB,
    CAPTION_TOKENS,
    DTYPES,
    FULL,
    REAL_TOKENS,
    SMOKE,
    TIMESTEP,
    caption_inputs,
    seeded_noise,
    weight_bytes,
)
from .report import metadata

log = logging.getLogger("gpu_harness")
MEASURE_CAP_S = 12.0  # a step timing stops repeating once its samples add up to this


def sample_stats(samples: list[float]) -> dict:
    return {"min_s": min(samples), "samples_s": samples}


def finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())


class Harness:
    def __init__(self, args: argparse.Namespace, argv: list[str]):
        self.args = args
        self.device = torch.device(args.device)
        self.dtype = torch.float32 if args.smoke else torch.bfloat16
        self.dtype_name = next(name for name, value in DTYPES.items() if value == self.dtype)
        self.deadline = time.monotonic() + args.budget_s
        self.step_cache: dict[tuple[str, int], dict] = {}
        self.casting = Casting(self.device)
        self.results: dict = {"meta": {**metadata(argv, self.device), "comfyui": self.casting.comfyui}}
        start = time.perf_counter()
        self.ours, self.reference = random_pair(**(SMOKE if args.smoke else FULL), device=self.device, dtype=self.dtype)
        self.park_reference()
        self.context, self.mask = caption_inputs(self.ours.config.caption_channels, self.device, self.dtype)
        self.scheduler = pixart_sigma_scheduler()
        self.results["config"] = self.describe_setup(time.perf_counter() - start)

    def describe_setup(self, build_s: float) -> dict:
        c = self.ours.config
        setup = {"model": c.describe(), "hidden": c.hidden_size, "depth": c.depth, "heads": c.num_heads,
                 "head_dim": c.hidden_size // c.num_heads, "mlp": c.mlp_hidden, "caption_channels": c.caption_channels,
                 "caption_tokens": CAPTION_TOKENS, "real_tokens_uncond_cond": list(REAL_TOKENS), "dtype": self.dtype_name,
                 "steps": STEPS, "guidance": GUIDANCE, "cfg_batch": 2, "sizes_px": self.args.sizes,
                 "latent_sides": {str(px): self.side(px) for px in self.args.sizes}, "smoke": self.args.smoke,
                 "weights_gb": weight_bytes(self.ours) / BYTES_PER_GB, "build_s": build_s,
                 "scheduler": {"class": type(self.scheduler).__name__, **PIXART_SIGMA}}
        log.info("model: %s, %s, built in %.1f s", setup["model"], self.dtype_name, build_s)
        return setup

    # -- helpers

    def side(self, px: int) -> int:
        """Latent side for an image side: px / 8 (the VAE), or px / 128 for the tiny smoke model."""
        return px // (128 if self.args.smoke else 8)

    def park_reference(self) -> None:
        """Keep diffusers' copy off the GPU except in its own section, so that only our DiT takes VRAM."""
        self.reference.to("cpu")
        self.free_memory()

    def free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, runs: dict, repeats: int, **limits) -> Timings:
        """bench.fixtures.timing.interleaved, synchronized with the device."""
        return interleaved(runs, repeats, synchronize=self.synchronize, **limits)

    def time_step(self, name: str, forward) -> dict:
        """s/step of one forward: median of up to --repeats timed calls after a short warm-up, capped in time."""
        timings = self.time({name: forward}, self.args.repeats, warmup=2, warmup_cap_s=1.0, cap_s=MEASURE_CAP_S)
        return {"s_per_step": timings.median(name), **sample_stats(timings.samples[name]),
                "finite": finite(timings.results[name])}

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def cfg_batch(self, px: int, dtype: torch.dtype) -> torch.Tensor:
        """The doubled latent of a CFG step, as the pipeline builds it. -> (2, 4, h, w)"""
        noise = seeded_noise(self.side(px), self.device, dtype)
        return torch.cat([noise, noise])

    def timesteps(self) -> torch.Tensor:
        return torch.full((2,), TIMESTEP, device=self.device)  # (2,)

    def encode(self, model: PixArtDiT, dtype: torch.dtype):
        return model.encode_caption(self.context.to(dtype), self.mask, dtype)

    def sample(self, model: PixArtDiT, px: int, kv: KVCompress | None = None) -> torch.Tensor:
        """A 20-step image's latent from the seeded noise, caption encoded once. -> (1, 4, side, side)"""
        noise = seeded_noise(self.side(px), self.device, self.dtype)
        return sample(model, noise, self.encode(model, self.dtype), self.scheduler, kv)

    # -- measurements

    def step_time(self, variant: str, model: PixArtDiT, px: int, kv: KVCompress | None = None,
                  dtype: torch.dtype | None = None) -> dict:
        """s/step with CFG (batch 2) at px, memoised per (variant, px)."""
        key = (variant, px)
        if key not in self.step_cache:
            dtype = dtype or self.dtype
            caption = self.encode(model, dtype)
            x, t = self.cfg_batch(px, dtype), self.timesteps()
            entry = self.time_step(variant, lambda: model(x, t, None, caption=caption, kv_compress=kv))
            log.info("step   %5d px (latent %d) %-22s %9.4f s/step  (median of %d)", px, self.side(px), variant,
                     entry["s_per_step"], len(entry["samples_s"]))
            self.step_cache[key] = entry
        return self.step_cache[key]

    def image_time(self, variant: str, model: PixArtDiT, px: int, kv: KVCompress | None = None) -> dict:
        """20-step s/image with CFG: caption encoding, DiT and scheduler. Estimated as 20 x s/step (and labelled so)
        under --quick at 4K or when the predicted time would overrun the budget."""
        step = self.step_time(variant, model, px, kv)  # also the warm-up
        predicted = STEPS * step["s_per_step"]
        repeats = 1 if px >= 4096 else min(3, self.args.repeats)
        reason = None
        if self.args.quick and px >= 4096:
            reason = "--quick skips 4K image runs"
        elif predicted * repeats * 1.2 > self.remaining():
            reason = f"predicted {predicted * repeats:.0f} s would overrun the budget ({self.remaining():.0f} s left)"
        if reason:
            log.info("image  %5d px %-22s %9.3f s/image  ESTIMATED (20 x s/step): %s", px, variant, predicted, reason)
            return {"s_per_image": predicted, "estimated": True, "how": "20 x s/step, scheduler excluded",
                    "reason": reason}
        timings = self.time({variant: lambda: self.sample(model, px, kv)}, repeats, warmup=0)
        entry = {"s_per_image": timings.median(variant), "estimated": False, **sample_stats(timings.samples[variant]),
                 "finite": finite(timings.results[variant])}
        log.info("image  %5d px %-22s %9.3f s/image  (median of %d)", px, variant, entry["s_per_image"],
                 len(timings.samples[variant]))
        return entry
