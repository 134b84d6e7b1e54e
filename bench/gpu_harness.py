"""GPU benchmark of the PixArt-Σ engine, in one command, for an H100/H200 (finishes well inside 10 minutes):

    python bench/gpu_harness.py --out bench/results/gpu-$(date +%F).json

Full-size PixArt-Σ with random weights (28 blocks, hidden 1152, 16 heads of 72, mlp 4608, T5 width 4096, 300
caption tokens with 40 / 120 real ones for uncond / cond), built once as diffusers' PixArtTransformer2DModel and
converted to our DiT (diffusers_to_internal + detect_config), so both run exactly the same weights. bf16 unless
a section says otherwise; CFG batch of 2; 20 steps of DPM-Solver++ 2M (the pipeline's scheduler), guidance 4.5.
Sections (JSON keys; the file is rewritten after each, so a timeout keeps what finished):
  step       s/step with CFG at 1024 / 2048 / 4096 px
  image      20-step s/image (DiT + scheduler; caption encoded once per image; no T5, no VAE)
  dtype      s/step at 1024 px with bf16, fp16 and fp8_e4m3fn weights (fp8 cast to bf16 per layer: bench/gpu_ops.py)
  kv         KV compression 2x2 avg on the deep half / all layers at 2048 and 4096 px, and a 4K image with all layers
  memory     peak VRAM of a 20-step 1024 px image with only the DiT on the GPU
  attention  the attention kernels that ran (profiler) and torch's SDPA backend switches
  diffusers  PixArtSigmaPipeline on the same weights and inputs: s/image, our speedup, latent difference, s/step
  compile    (--compile) each block under torch.compile, s/step at 1024 px
  summary    analytic FLOPs, achieved TFLOP/s, the design's compute bound, and the performance targets pass/fail
Images whose predicted time would overrun --budget-s (and 4K images under --quick) are reported as 20 x s/step,
marked "estimated". CPU smoke run of every section on a tiny model (seconds; what tests/test_gpu_harness_smoke.py
runs): python bench/gpu_harness.py --device cpu --smoke --out /tmp/gpu-smoke.json
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import gpu_ops  # noqa: E402
from bench.common import diffusers_transformer, ours_from  # noqa: E402
from pixart.dit import PixArtDiT  # noqa: E402
from pixart.kv_compress import KVCompress, default_layers  # noqa: E402

log = logging.getLogger("gpu_harness")

SECTIONS = ("step", "image", "dtype", "kv", "memory", "attention", "diffusers", "compile", "summary")
# Run order: memory first, as in a fresh process (no other sizes' buffers cached yet); the long optional runs
# (image at 4K, compile) late, so that a tight budget skips them rather than the comparisons.
RUN_ORDER = ("memory", "step", "dtype", "kv", "attention", "diffusers", "image", "compile", "summary")
FULL = {"depth": 28, "heads": 16, "caption_channels": 4096}  # hidden 16 x 72 = 1152, mlp 4608
SMOKE = {"depth": 2, "heads": 2, "caption_channels": 64}  # head dim stays 72
CAPTION_TOKENS = 300
REAL_TOKENS = (40, 120)  # uncond, cond: diffusers' CFG batch order
STEPS = 20
GUIDANCE = 4.5
TIMESTEP = 500.0  # for single-step timings
MEASURE_CAP_S = 12.0  # a step timing stops repeating once its samples add up to this
COMPILE_RESERVE_S = 120.0  # compiling 28 blocks and timing them
BYTES_PER_GB = 1e9
DESIGN_BOUND = {1024: (6.6, 0.34), 2048: (52.0, 2.7), 4096: (625.0, 32.0)}  # TFLOP per forward, s per 20 CFG steps
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# PixArtSigmaPipeline's scheduler: the PixArt-Σ repos' scheduler_config.json (DPM-Solver++ 2M, linear betas, linspace
# spacing, final step to sigma 0); tests/test_text_bins_schedule.py checks it against pixart.schedule.
SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
             "prediction_type": "epsilon", "algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint",
             "lower_order_final": True, "timestep_spacing": "linspace", "final_sigmas_type": "zero"}


# ---------------------------------------------------------------- models and inputs

def randomize(model: nn.Module, seed: int) -> None:
    """Every parameter random, zero-initialised ones too: fan-in scaled matrices keep activations O(1) at any width,
    biases and modulation tables small but non-zero."""
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, device=device)
            if param.ndim >= 2 and "scale_shift_table" not in name:
                noise /= param[0].numel() ** 0.5
            else:
                noise *= 0.1
            param.copy_(noise)


def build_models(shape: dict, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """The same random weights as diffusers' PixArtTransformer2DModel and as our PixArtDiT. -> (ours, reference)."""
    with torch.device(device):
        reference = diffusers_transformer(**shape)
    reference = reference.to(device=device, dtype=dtype)
    randomize(reference, seed)
    ours, _ = ours_from(reference, dtype=dtype, device=device)
    return ours, reference


def copy_model(model: PixArtDiT, dtype: torch.dtype, operations=nn) -> PixArtDiT:
    """Our DiT rebuilt in another dtype and/or with other layer classes, same weights."""
    parameter = next(model.parameters())
    copy = PixArtDiT(model.config, operations=operations, dtype=dtype, device=parameter.device).eval()
    copy.load_state_dict(model.state_dict())
    return copy


def caption_inputs(channels: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Random T5 features and their padding mask. -> (2, 300, channels) uncond then cond, (2, 300) 1 = real."""
    context = torch.randn(2, CAPTION_TOKENS, channels, generator=torch.Generator("cpu").manual_seed(1))
    mask = torch.zeros(2, CAPTION_TOKENS, dtype=torch.long)
    for row, real in enumerate(REAL_TOKENS):
        mask[row, :real] = 1
    return context.to(device, dtype), mask.to(device)


def seeded_noise(side: int, device: torch.device, dtype: torch.dtype, seed: int = 2) -> torch.Tensor:
    """(1, 4, side, side) from a CPU generator, as diffusers' pipelines draw it."""
    return torch.randn(1, 4, side, side, generator=torch.Generator("cpu").manual_seed(seed)).to(device, dtype)


def reference_scheduler():
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(**SCHEDULER)


def sample(model: PixArtDiT, noise: torch.Tensor, caption, scheduler, kv: KVCompress | None = None) -> torch.Tensor:
    """PixArtSigmaPipeline's denoising loop with our DiT. noise (1, 4, h, w) -> latent (1, 4, h, w).

    caption: model.encode_caption of the (uncond, cond) batch, reused at every step.
    """
    scheduler.set_timesteps(STEPS, device=noise.device)
    latents = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)  # (2, 4, h, w)
        out = model(model_in, t.expand(2), None, caption=caption, kv_compress=kv)  # (2, 8, h, w)
        eps_uncond, eps_cond = out[:, : latents.shape[1]].chunk(2)  # learned sigma: epsilon is the first half
        eps = eps_uncond + GUIDANCE * (eps_cond - eps_uncond)  # (1, 4, h, w)
        latents = scheduler.step(eps, t, latents, return_dict=False)[0]
    return latents


def build_pipeline(reference):
    """PixArtSigmaPipeline around the reference transformer; no T5 (embeddings are passed in), a tiny unused VAE."""
    from diffusers import AutoencoderKL, PixArtSigmaPipeline

    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=8,
                        latent_channels=4)  # four levels: vae_scale_factor 8, as SDXL's
    pipe = PixArtSigmaPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=reference,
                               scheduler=reference_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_latents(pipe, context: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """20 steps of the diffusers pipeline from the given noise. context (2, L, C) and mask (2, L): uncond, cond."""
    height, width = noise.shape[2] * 8, noise.shape[3] * 8
    return pipe(negative_prompt=None, prompt_embeds=context[1:], prompt_attention_mask=mask[1:],
                negative_prompt_embeds=context[:1],
                negative_prompt_attention_mask=mask[:1], latents=noise, height=height, width=width,
                num_inference_steps=STEPS, guidance_scale=GUIDANCE, output_type="latent",
                use_resolution_binning=False, return_dict=False)[0]


@contextlib.contextmanager
def compiled_blocks(model: PixArtDiT):
    """Each block wrapped by torch.compile (sharing its parameters) while the context is open."""
    original = model.blocks
    model.blocks = nn.ModuleList(torch.compile(block) for block in original)
    try:
        yield
    finally:
        model.blocks = original


# ---------------------------------------------------------------- timing

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn, device: torch.device):
    """-> (seconds, fn's result), synchronized on both sides."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def timed(fn, device: torch.device, repeats: int, warmup: int = 2, cap_s: float = MEASURE_CAP_S):
    """Warm up (at most `warmup` calls, fewer when one takes over a second), then up to `repeats` timed calls,
    stopping early once they add up to cap_s. -> (the timed calls' seconds, the last result)."""
    spent = 0.0
    for _ in range(warmup):
        seconds, result = time_once(fn, device)
        spent += seconds
        if spent > 1.0:
            break
    samples = []
    while len(samples) < repeats and (not samples or sum(samples) < cap_s):
        seconds, result = time_once(fn, device)
        samples.append(seconds)
    return samples, result


def stats(samples: list[float]) -> dict:
    return {"min_s": min(samples), "samples_s": samples}


def finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())


# ---------------------------------------------------------------- FLOPs

def forward_flops(config, tokens: int, caption_tokens: int, kv_tokens: int | None = None,
                  kv_layers: int = 0) -> float:
    """Analytic FLOPs of one forward for ONE sample (a CFG step runs two): 2*M*N*K per matmul.

    Per block: qkv 6ND², self-attn proj 2ND², cross q and proj 4ND², MLP 4NDM (M = mlp width); attention
    4·N·Nk·D over all heads (QKᵀ and AV), Nk = N, or the compressed key count in kv_layers of the blocks; cross
    attention 4·N·L·D. Plus patch embedding and final layer. Caption projection and cross-attention K/V
    (once per image) and elementwise work are left out.
    """
    d, m, depth, p = config.hidden_size, config.mlp_hidden, config.depth, config.patch_size
    kv_tokens = tokens if kv_tokens is None else kv_tokens
    linear = (6 + 2 + 4) * tokens * d * d + 4 * tokens * d * m  # per block
    cross_attn = 4 * tokens * caption_tokens * d  # per block
    self_attn = 4 * tokens * d * ((depth - kv_layers) * tokens + kv_layers * kv_tokens)  # all blocks
    ends = 2 * tokens * d * (config.in_channels + config.out_channels) * p * p  # patch embedding, final layer
    return depth * (linear + cross_attn) + self_attn + ends


# ---------------------------------------------------------------- the harness

class Harness:
    def __init__(self, args: argparse.Namespace, argv: list[str]):
        self.args = args
        self.device = torch.device(args.device)
        self.dtype = torch.float32 if args.smoke else torch.bfloat16
        self.dtype_name = next(name for name, value in DTYPES.items() if value == self.dtype)
        self.deadline = time.monotonic() + args.budget_s
        self.step_cache: dict[tuple[str, int], dict] = {}
        self.results: dict = {"meta": metadata(argv, self.device)}
        start = time.perf_counter()
        self.ours, self.reference = build_models(SMOKE if args.smoke else FULL, self.device, self.dtype)
        self.park_reference()
        self.context, self.mask = caption_inputs(self.ours.config.caption_channels, self.device, self.dtype)
        self.scheduler = reference_scheduler()
        self.results["config"] = self.describe_setup(time.perf_counter() - start)

    # -- setup helpers

    def describe_setup(self, build_s: float) -> dict:
        c = self.ours.config
        setup = {"model": c.describe(), "hidden": c.hidden_size, "depth": c.depth, "heads": c.num_heads,
                 "head_dim": c.hidden_size // c.num_heads, "mlp": c.mlp_hidden, "caption_channels": c.caption_channels,
                 "caption_tokens": CAPTION_TOKENS, "real_tokens_uncond_cond": list(REAL_TOKENS), "dtype": self.dtype_name,
                 "steps": STEPS, "guidance": GUIDANCE, "cfg_batch": 2, "sizes_px": self.args.sizes,
                 "latent_sides": {str(px): self.side(px) for px in self.args.sizes}, "smoke": self.args.smoke,
                 "weights_gb": weight_bytes(self.ours) / BYTES_PER_GB, "build_s": build_s,
                 "scheduler": {"class": type(self.scheduler).__name__, **SCHEDULER}}
        log.info("model: %s, %s, built in %.1f s", setup["model"], self.dtype_name, build_s)
        return setup

    def side(self, px: int) -> int:
        """Latent side for an image side: px / 8 (the VAE), or px / 128 for the tiny smoke model."""
        return px // (128 if self.args.smoke else 8)

    def park_reference(self) -> None:
        """Keep diffusers' copy off the GPU except in its own section, so that only our DiT takes VRAM."""
        self.reference.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def cfg_batch(self, px: int, dtype: torch.dtype) -> torch.Tensor:
        """The doubled latent of a CFG step, as the pipeline builds it. -> (2, 4, h, w)"""
        noise = seeded_noise(self.side(px), self.device, dtype)
        return torch.cat([noise, noise])

    def encode(self, model: PixArtDiT, dtype: torch.dtype):
        return model.encode_caption(self.context.to(dtype), self.mask, dtype)

    # -- measurements

    def step_time(self, variant: str, model: PixArtDiT, px: int, kv: KVCompress | None = None,
                  dtype: torch.dtype | None = None) -> dict:
        """s/step with CFG (batch 2) at px, memoised per (variant, px)."""
        key = (variant, px)
        if key not in self.step_cache:
            dtype = dtype or self.dtype
            side = self.side(px)
            caption = self.encode(model, dtype)
            x = self.cfg_batch(px, dtype)
            t = torch.full((2,), TIMESTEP, device=self.device)
            samples, out = timed(lambda: model(x, t, None, caption=caption, kv_compress=kv), self.device,
                                 self.args.repeats)
            entry = {"s_per_step": statistics.median(samples), **stats(samples), "finite": finite(out)}
            log.info("step   %5d px (latent %d) %-22s %9.4f s/step  (median of %d)", px, side, variant,
                     entry["s_per_step"], len(samples))
            self.step_cache[key] = entry
        return self.step_cache[key]

    def image_time(self, variant: str, model: PixArtDiT, px: int, kv: KVCompress | None = None,
                   repeats: int | None = None) -> dict:
        """20-step s/image with CFG: caption encoding, DiT and scheduler. Estimated as 20 x s/step (and labelled so)
        under --quick at 4K or when the predicted time would overrun the budget."""
        step = self.step_time(variant, model, px, kv)  # also the warm-up
        predicted = STEPS * step["s_per_step"]
        repeats = repeats or (1 if px >= 4096 else min(3, self.args.repeats))
        reason = None
        if self.args.quick and px >= 4096:
            reason = "--quick skips 4K image runs"
        elif predicted * repeats * 1.2 > self.remaining():
            reason = f"predicted {predicted * repeats:.0f} s would overrun the budget ({self.remaining():.0f} s left)"
        if reason:
            log.info("image  %5d px %-22s %9.3f s/image  ESTIMATED (20 x s/step): %s", px, variant, predicted, reason)
            return {"s_per_image": predicted, "estimated": True, "how": "20 x s/step, scheduler excluded",
                    "reason": reason}
        noise = seeded_noise(self.side(px), self.device, self.dtype)
        samples, latent = timed(lambda: sample(model, noise, self.encode(model, self.dtype), self.scheduler, kv),
                                self.device, repeats, warmup=0, cap_s=float("inf"))
        entry = {"s_per_image": statistics.median(samples), "estimated": False, **stats(samples),
                 "finite": finite(latent)}
        log.info("image  %5d px %-22s %9.3f s/image  (median of %d)", px, variant, entry["s_per_image"], len(samples))
        return entry

    def reference_step_time(self, px: int) -> dict:
        """diffusers' transformer alone: s/step with CFG (batch 2), projecting the caption at every step as it does."""
        x = self.cfg_batch(px, self.dtype)
        t = torch.full((2,), TIMESTEP, device=self.device)
        no_micro = {"resolution": None, "aspect_ratio": None}
        samples, out = timed(lambda: self.reference(x, encoder_hidden_states=self.context, timestep=t,
                                                    encoder_attention_mask=self.mask, added_cond_kwargs=no_micro,
                                                    return_dict=False)[0], self.device, self.args.repeats)
        log.info("step   %5d px diffusers transformer  %9.4f s/step", px, statistics.median(samples))
        return {"s_per_step": statistics.median(samples), **stats(samples), "finite": finite(out)}

    # -- sections

    def section_step(self) -> dict:
        return {str(px): self.step_time(self.dtype_name, self.ours, px) for px in self.args.sizes}

    def section_image(self) -> dict:
        return {str(px): self.image_time(self.dtype_name, self.ours, px) for px in self.args.sizes}

    def section_dtype(self) -> dict:
        px = min(self.args.sizes)
        result = {"px": px}
        variants = [("bf16", torch.bfloat16, nn), ("fp16", torch.float16, nn)]
        fp8 = getattr(torch, "float8_e4m3fn", None)
        reason = "this torch has no float8_e4m3fn" if fp8 is None else \
            gpu_ops.storage_supported(fp8, torch.bfloat16, self.device)
        if reason:
            result["fp8_e4m3fn"] = {"skipped": reason}
        else:
            variants.append(("fp8_e4m3fn", torch.bfloat16, gpu_ops))
        for name, compute, operations in variants:
            if compute == self.dtype and operations is nn:
                model = self.ours
            else:
                model = copy_model(self.ours, compute, operations)
            if operations is gpu_ops:
                gpu_ops.store_weights(model, fp8)
            entry = self.step_time(name, model, px, dtype=compute)
            result[name] = {**entry, "weights_gb": weight_bytes(model) / BYTES_PER_GB,
                            "compute_dtype": str(compute).replace("torch.", "")}
            del model
            self.free_memory()
        return result

    def section_kv(self) -> dict:
        depth = self.ours.config.depth
        settings = {f"deep_half_{depth // 2}-{depth - 1}": default_layers(depth),
                    f"all_0-{depth - 1}": frozenset(range(depth))}
        result = {"ratio": 2, "mode": "avg"}
        for px in [size for size in self.args.sizes if size >= 2048]:
            off = self.step_time(self.dtype_name, self.ours, px)
            result[str(px)] = {"off": off}
            for name, layers in settings.items():
                entry = self.step_time(f"kv2x2 {name}", self.ours, px, KVCompress(2, layers, "avg"))
                result[str(px)][name] = {**entry, "speedup_vs_off": off["s_per_step"] / entry["s_per_step"]}
        if 4096 in self.args.sizes:
            all_layers = KVCompress(2, frozenset(range(depth)), "avg")
            result["image_4096_all_layers"] = self.image_time(f"kv2x2 all_0-{depth - 1}", self.ours, 4096, all_layers)
        return result

    def section_memory(self) -> dict:
        if self.device.type != "cuda":
            return {"skipped": "n/a on cpu"}
        px = min(self.args.sizes)
        noise = seeded_noise(self.side(px), self.device, self.dtype)
        self.free_memory()
        torch.cuda.reset_peak_memory_stats(self.device)
        resident = torch.cuda.memory_allocated(self.device)
        latent = sample(self.ours, noise, self.encode(self.ours, self.dtype), self.scheduler)
        synchronize(self.device)
        result = {"px": px, "unit": "GB = 1e9 bytes",
                  "peak_gb": torch.cuda.max_memory_allocated(self.device) / BYTES_PER_GB,
                  "peak_reserved_gb": torch.cuda.max_memory_reserved(self.device) / BYTES_PER_GB,
                  "resident_before_gb": resident / BYTES_PER_GB,
                  "weights_gb": weight_bytes(self.ours) / BYTES_PER_GB, "finite": finite(latent),
                  "what": "20-step CFG sampling incl. caption encoding; only our DiT on the GPU (no T5, no VAE)"}
        log.info("memory %5d px peak %.2f GB allocated (%.2f GB reserved), weights %.2f GB", px, result["peak_gb"],
                 result["peak_reserved_gb"], result["weights_gb"])
        return result

    def section_attention(self) -> dict:
        px = min(self.args.sizes)
        caption = self.encode(self.ours, self.dtype)
        x = self.cfg_batch(px, self.dtype)
        t = torch.full((2,), TIMESTEP, device=self.device)
        self.ours(x, t, None, caption=caption)  # warm-up outside the profile
        synchronize(self.device)
        return {"px": px, **profile_attention(lambda: self.ours(x, t, None, caption=caption), self.device)}

    def section_diffusers(self) -> dict:
        sizes = [px for px in self.args.sizes if px <= (1024 if self.args.quick else 2048)]
        self.reference.to(self.device)
        try:
            pipe = build_pipeline(self.reference)
            return {str(px): self.compare_with_pipeline(pipe, px) for px in sizes}
        finally:
            self.park_reference()

    def compare_with_pipeline(self, pipe, px: int) -> dict:
        ours_step = self.step_time(self.dtype_name, self.ours, px)
        ref_step = self.reference_step_time(px)  # also warms the reference up
        predicted = STEPS * (ours_step["s_per_step"] + ref_step["s_per_step"]) * min(3, self.args.repeats)
        if predicted * 1.2 > self.remaining():
            return {"skipped": f"predicted {predicted:.0f} s would overrun the budget ({self.remaining():.0f} s left)"}
        noise = seeded_noise(self.side(px), self.device, self.dtype)
        times = {"ours": [], "diffusers": []}
        for _ in range(min(3, self.args.repeats)):  # interleaved, so both see the same machine state
            seconds, ours = time_once(lambda: sample(self.ours, noise, self.encode(self.ours, self.dtype),
                                                     self.scheduler), self.device)
            times["ours"].append(seconds)
            seconds, theirs = time_once(lambda: pipeline_latents(pipe, self.context, self.mask, noise), self.device)
            times["diffusers"].append(seconds)
        ours_s, theirs_s = statistics.median(times["ours"]), statistics.median(times["diffusers"])
        difference = (ours.float() - theirs.float()).abs().max().item()
        entry = {"ours_s_per_image": ours_s, "diffusers_s_per_image": theirs_s, "speedup": theirs_s / ours_s,
                 "ratio_ours_over_diffusers": ours_s / theirs_s, "ours_samples_s": times["ours"],
                 "diffusers_samples_s": times["diffusers"], "latent_max_abs_diff": difference,
                 "latent_max_abs_diff_over_std": difference / theirs.float().std().item(),
                 "ours_s_per_step": ours_step["s_per_step"], "diffusers_transformer_s_per_step": ref_step["s_per_step"],
                 "step_speedup": ref_step["s_per_step"] / ours_step["s_per_step"],
                 "note": "s/step: ours reuses the encoded caption, diffusers projects it every step as its pipeline does"}
        log.info("diffusers %5d px ours %.3f s/image, diffusers %.3f s/image: %.2fx faster; latent max |diff| %.2e",
                 px, ours_s, theirs_s, entry["speedup"], difference)
        return entry

    def section_compile(self) -> dict:
        if self.remaining() < COMPILE_RESERVE_S:
            return {"skipped": f"compiling needs ~{COMPILE_RESERVE_S:.0f} s; {self.remaining():.0f} s of budget left"}
        px = min(self.args.sizes)
        eager = self.step_time(self.dtype_name, self.ours, px)
        caption = self.encode(self.ours, self.dtype)
        x = self.cfg_batch(px, self.dtype)
        t = torch.full((2,), TIMESTEP, device=self.device)
        with compiled_blocks(self.ours):
            compile_s, _ = time_once(lambda: self.ours(x, t, None, caption=caption), self.device)
            log.info("compile %4d px first call (compiling) %.1f s", px, compile_s)
            entry = self.step_time(f"{self.dtype_name} compiled", self.ours, px)
        return {"px": px, "mode": "default", "first_call_s": compile_s, **entry,
                "speedup_vs_eager": eager["s_per_step"] / entry["s_per_step"]}

    def section_summary(self) -> dict:
        return summarize(self.results, self.ours.config, self.args.sizes, self.side, self.args.smoke)

    # -- running

    def free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def run(self, sections: list[str], out: str) -> dict:
        for name in (s for s in RUN_ORDER if s in sections):
            if name != "summary" and self.remaining() <= 0:
                self.results[name] = {"skipped": f"budget of {self.args.budget_s:g} s used up"}
            else:
                log.info("== %s", name)
                start = time.perf_counter()
                try:
                    self.results[name] = getattr(self, f"section_{name}")()
                except Exception as err:  # record and go on: one GPU run should report every section it can
                    log.exception("section %s failed", name)
                    self.results[name] = {"error": f"{type(err).__name__}: {err}"}
                    self.free_memory()
                self.results[name]["section_s"] = time.perf_counter() - start
            write_json(out, self.results)
        return self.results


def weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def profile_attention(forward, device: torch.device) -> dict:
    """Profile one forward and keep the events whose names show an attention kernel or SDPA backend."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        forward()
        synchronize(device)
    keywords = ("flash", "attention", "fmha", "sdpa", "cudnn", "efficient")
    events = []
    for event in prof.key_averages():
        if any(word in event.key.lower() for word in keywords):
            events.append({"name": event.key[:200], "count": event.count, "cpu_total_us": event.cpu_time_total,
                           "device_total_us": getattr(event, "device_time_total", None)
                           or getattr(event, "cuda_time_total", 0.0)})  # torch < 2.4 names it cuda_time_total
    events.sort(key=lambda e: (e["device_total_us"], e["cpu_total_us"]), reverse=True)
    backends = {"flash": "_flash_attention", "mem_efficient": "_efficient_attention", "cudnn": "_cudnn_attention",
                "math": "_attention_math"}
    used = sorted(name for name, op in backends.items() if any(op in e["name"] for e in events))
    result = {"events": events, "sdpa_backends_used": used, "profiled": "CPU + CUDA" if cuda else "CPU"}
    if cuda:
        result["sdp_enabled"] = {"flash": torch.backends.cuda.flash_sdp_enabled(),
                                 "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                                 "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
                                 "math": torch.backends.cuda.math_sdp_enabled()}
    log.info("attention: SDPA backends %s; top events %s", used, [e["name"] for e in events[:4]])
    return result


# ---------------------------------------------------------------- summary

def summarize(results: dict, config, sizes: list[int], side, smoke: bool) -> dict:
    """FLOPs, achieved throughput, the design's compute bound and the targets, from the sections that ran."""
    flops, bound = {}, {}
    for px in sizes:
        key, design = str(px), None if smoke else DESIGN_BOUND.get(px)
        flops[key] = size_flops(config, side(px) // config.patch_size, design)
        bound[key] = size_bound(results, key, flops[key], design)
        log.info("flops  %5d px %.4g TFLOP per forward of one sample (design: %s); %s", px,
                 flops[key]["tflop_per_forward_one_sample"], design and design[0],
                 ", ".join(f"{name} {value:.3g}" for name, value in bound[key].items()))
    targets = check_targets(results)
    for row in targets:
        log.info("target %-48s measured %-10s target %-8s %s%s", row["target"],
                 "-" if row["measured"] is None else f"{row['measured']:.3g}", row["limit"],
                 {True: "PASS", False: "FAIL", None: "not measured"}[row["pass"]],
                 " (estimated)" if row["estimated"] else "")
    return {
        "flops": flops, "compute_bound": bound, "targets": targets,
        "notes": [
            "FLOPs are analytic: 2*M*N*K per matmul, 4*N*Nk*D for self-attention (QK^T and AV, all heads), "
            "4*N*L*D for cross-attention; per forward of ONE sample, so a CFG step (batch 2) is twice that.",
            "The design's 6.6 / 52 / 625 TFLOP match this count per single-sample forward with 300 caption tokens; "
            "its 0.34 / 2.7 / 32 s bounds are 20 steps x 2 (CFG) forwards at about 780 TFLOP/s (~79% of the H100 "
            "SXM's 989 dense bf16 TFLOP/s).",
            "As run, the caption is trimmed to the longest real prompt (120 tokens): 1.4% fewer FLOPs at 1024 px, "
            "less at larger sizes.",
            "Achieved TFLOP/s = 2 x per-sample FLOPs / measured s/step.",
        ] + (["smoke run: tiny model on CPU; the targets are for full size on an H100"] if smoke else []),
    }


def size_flops(config, grid: int, design: tuple[float, float] | None) -> dict:
    """Our FLOP count at a grid x grid token grid, next to the design's (TFLOP, s) figures when it has some."""
    caption = max(REAL_TOKENS)  # encode_caption trims to the longest real prompt
    tokens, kv_tokens = grid**2, (-(-grid // 2)) ** 2  # KV 2x2: ceil(grid / 2) per side
    per_sample = forward_flops(config, tokens, caption)
    return {"tokens": tokens, "caption_tokens_as_run": caption, "tflop_per_forward_one_sample": per_sample / 1e12,
            "tflop_per_forward_one_sample_300_caption": forward_flops(config, tokens, CAPTION_TOKENS) / 1e12,
            "design_tflop_per_forward": design and design[0],
            "tflop_per_cfg_step": 2 * per_sample / 1e12,
            "tflop_per_cfg_step_kv2x2_all": 2 * forward_flops(config, tokens, caption, kv_tokens, config.depth) / 1e12}


def size_bound(results: dict, px: str, flops: dict, design: tuple[float, float] | None) -> dict:
    """Achieved TFLOP/s from the measured s/step, and the measured s/image against the design's bound."""
    step = results.get("step", {}).get(px, {})
    image = results.get("image", {}).get(px, {})
    entry = {}
    if "s_per_step" in step:
        entry["achieved_tflops_per_s"] = flops["tflop_per_cfg_step"] / step["s_per_step"]
    if design:
        entry["design_bound_s_per_image"] = design[1]
        if "s_per_image" in image:
            entry["measured_s_per_image"] = image["s_per_image"]
            entry["measured_over_bound"] = image["s_per_image"] / design[1]
    return entry


def check_targets(results: dict) -> list[dict]:
    """The performance targets, each with its measured value and pass / fail (None when not measured)."""
    def get(*path):
        node = results
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node

    kv_image = get("kv", "image_4096_all_layers") or {}
    rows = [
        ("1024 px, 20 steps, DiT s/image", get("image", "1024", "s_per_image"), "<=", 0.6,
         get("image", "1024", "estimated")),
        ("2048 px, 20 steps, DiT s/image", get("image", "2048", "s_per_image"), "<=", 5.0,
         get("image", "2048", "estimated")),
        ("4096 px, 20 steps, KV 2x2 all layers, s/image", kv_image.get("s_per_image"), "<=", 20.0,
         kv_image.get("estimated")),
        ("1024 px speedup vs diffusers pipeline (x)", get("diffusers", "1024", "speedup"), ">=", 1.3, False),
        ("1024 px peak VRAM, 20 steps (GB)", get("memory", "peak_gb"), "<=", 3.0, False),
    ]
    table = []
    for target, measured, op, limit, estimated in rows:
        passed = None if measured is None else (measured <= limit if op == "<=" else measured >= limit)
        table.append({"target": target, "measured": measured, "limit": f"{op} {limit:g}", "pass": passed,
                      "estimated": bool(estimated)})
    return table


# ---------------------------------------------------------------- metadata, output, command line

def git(*command: str) -> str | None:
    try:
        return subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def metadata(argv: list[str], device: torch.device) -> dict:
    import diffusers

    commit = git("rev-parse", "HEAD")
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(["python", "bench/gpu_harness.py", *argv]),
            "git_commit": commit, "git_dirty": None if commit is None else bool(git("status", "--porcelain")),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "host": platform.node()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta.update(device=torch.cuda.get_device_name(device), device_memory_gb=props.total_memory / BYTES_PER_GB,
                    multiprocessors=props.multi_processor_count, cudnn=torch.backends.cudnn.version())
    else:
        meta.update(device=f"cpu {platform.machine()} {platform.processor()}".strip(),
                    threads=torch.get_num_threads())
    return meta


def write_json(path: str, results: dict) -> None:
    """Write atomically, sections in their documented order."""
    ordered = {key: results[key] for key in ("meta", "config", *SECTIONS) if key in results}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as handle:
        json.dump(ordered, handle, indent=2)
    os.replace(path + ".tmp", path)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file, rewritten after every section")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--sizes", default="1024,2048,4096", help="image sides in px, comma-separated")
    parser.add_argument("--only", default="", help=f"comma-separated sections among {', '.join(SECTIONS)}")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per s/step (default 5, --quick 2, "
                                                                   "--smoke 1); images use up to 3")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 4K images estimated, diffusers at 1024 only")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd blocks at the smallest size")
    parser.add_argument("--smoke", action="store_true", help="tiny model in float32 (2 blocks, 2 heads of 72), for CPU")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="wall-clock budget: later sections are skipped and long images estimated past it")
    args = parser.parse_args(argv)
    args.sizes = sorted({int(part) for part in args.sizes.split(",") if part.strip()})
    if not args.sizes or any(px % 256 for px in args.sizes):
        parser.error(f"--sizes {args.sizes}: give image sides in px, each a multiple of 256 (e.g. 1024,2048,4096)")
    if args.repeats is None:
        args.repeats = 1 if args.smoke else 2 if args.quick else 5
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: time at least one call")
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()] or \
        [s for s in SECTIONS if s != "compile" or args.compile]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown sections {unknown}; choose among {', '.join(SECTIONS)}")
    if "summary" not in args.sections:
        args.sections.append("summary")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible to torch; use --device cpu --smoke for a CPU check")
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    start = time.perf_counter()
    with torch.inference_mode():
        results = Harness(args, argv).run(args.sections, args.out)
    log.info("done in %.0f s; results in %s", time.perf_counter() - start, args.out)
    return results


if __name__ == "__main__":
    main()
