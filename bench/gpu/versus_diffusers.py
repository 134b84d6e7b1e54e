"""Section diffusers: diffusers' PixArtSigmaPipeline on the same weights, caption embeddings and noise
(output_type="latent") as the side-by-side baseline: s/image of both, interleaved, our speedup, the latent difference,
and s/step of diffusers' transformer alone."""
from __future__ import annotations

import logging

from bench.fixtures.pipelines import pipeline_latents, sigma_pipeline
from bench.fixtures.sampling import STEPS

from .harness import Harness
from .inputs import seeded_noise

log = logging.getLogger("gpu_harness")


def diffusers(h: Harness) -> dict:
    sizes = [px for px in h.args.sizes if px <= (1024 if h.args.quick else 2048)]
    h.reference.to(h.device)
    try:
        pipeline = sigma_pipeline(h.reference)
        return {str(px): compare(h, pipeline, px) for px in sizes}
    finally:
        h.park_reference()


def reference_step_time(h: Harness, px: int) -> dict:
    """diffusers' transformer alone: s/step with CFG (batch 2), projecting the caption at every step as it does."""
    x, t = h.cfg_batch(px, h.dtype), h.timesteps()
    no_micro = {"resolution": None, "aspect_ratio": None}
    entry = h.time_step("diffusers", lambda: h.reference(x, encoder_hidden_states=h.context, timestep=t,
                                                          encoder_attention_mask=h.mask, added_cond_kwargs=no_micro,
                                                          return_dict=False)[0])
    log.info("step   %5d px diffusers transformer  %9.4f s/step", px, entry["s_per_step"])
    return entry


def compare(h: Harness, pipeline, px: int) -> dict:
    ours_step = h.step_time(h.dtype_name, h.ours, px)
    ref_step = reference_step_time(h, px)  # also warms the reference up
    repeats = min(3, h.args.repeats)
    predicted = STEPS * (ours_step["s_per_step"] + ref_step["s_per_step"]) * repeats
    if predicted * 1.2 > h.remaining():
        return {"skipped": f"predicted {predicted:.0f} s would overrun the budget ({h.remaining():.0f} s left)"}
    noise = seeded_noise(h.side(px), h.device, h.dtype)
    timings = h.time({"ours": lambda: h.sample(h.ours, px),
                      "diffusers": lambda: pipeline_latents(pipeline, h.context, h.mask, noise)}, repeats, warmup=0)
    ours_s, theirs_s = timings.median("ours"), timings.median("diffusers")
    ours, theirs = (timings.results[name].float() for name in ("ours", "diffusers"))
    difference = (ours - theirs).abs().max().item()
    entry = {"ours_s_per_image": ours_s, "diffusers_s_per_image": theirs_s, "speedup": theirs_s / ours_s,
             "ratio_ours_over_diffusers": ours_s / theirs_s, "ours_samples_s": timings.samples["ours"],
             "diffusers_samples_s": timings.samples["diffusers"], "latent_max_abs_diff": difference,
             "latent_max_abs_diff_over_std": difference / theirs.std().item(),
             "ours_s_per_step": ours_step["s_per_step"], "diffusers_transformer_s_per_step": ref_step["s_per_step"],
             "step_speedup": ref_step["s_per_step"] / ours_step["s_per_step"],
             "note": "s/step: ours reuses the encoded caption, diffusers projects it every step as its pipeline does"}
    log.info("diffusers %5d px ours %.3f s/image, diffusers %.3f s/image: %.2fx faster; latent max |diff| %.2e",
             px, ours_s, theirs_s, entry["speedup"], difference)
    return entry
