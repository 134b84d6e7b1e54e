"""PixArt Sampler: one node with diffusers-exact defaults, a published checkpoint's recipe, the learned-null negative and
KV compression, sampling through core KSampler's own path (nodes.common_ksampler: seeded CPU noise, the latent's
channel and downscale fixes, noise masks, previews, progress bar)."""
from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io, ui

from ..pixart.recipes import CUSTOM, DPM_SOLVER_2M, RECIPE_CHOICES, RECIPES, REFERENCE
from . import host
from .kv_compress_node import apply_kv, kv_inputs
from .null_caption import null_caption_negative
from .recipe_settings import recipe_settings


class PixArtKVSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return host.schema(
            node_id="PixArtKVSampler",
            search_aliases=["KSampler", "sampler", "KV compression", "DPM-Solver", "SA-Solver", "LCM", "DMD", "pixart"],
            display_name="PixArt Sampler (KV compression)",
            category="PixArt/sampling",
            description="Samples with ComfyUI's sampler stack. Defaults reproduce diffusers' PixArtSigmaPipeline: "
                        "20 steps, cfg 4.5, DPM-Solver++ 2M on the reference timestep schedule. A recipe runs a "
                        "published checkpoint the way its authors do (DMD, LCM, SA-Solver) instead of the steps, cfg, "
                        "sampler and scheduler set here.",
            inputs=[
                io.Model.Input("model", tooltip="A MODEL from the PixArt DiT Loader."),
                io.Conditioning.Input("positive", tooltip="The prompt (PixArt Text Encode or CLIPTextEncode)."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Optional. Left empty, the checkpoint's learned null caption is used "
                                              "(the official PixArt classifier-free guidance)."),
                io.Latent.Input("latent_image", tooltip="PixArt Empty Latent, or an encoded image for img2img."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed; equals diffusers' torch.Generator('cpu').manual_seed(seed) for batch 1."),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps (reference: 20)."),
                io.Float.Input("cfg", default=4.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale (reference: 4.5)."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default=DPM_SOLVER_2M,
                               tooltip="Any ComfyUI sampler; dpmpp_2m is the reference DPM-Solver++ 2M."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default=REFERENCE,
                               tooltip="pixart_reference = diffusers' integer timesteps round(linspace(0, 999, "
                                       "steps+1)) reversed; any ComfyUI scheduler works."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Below 1 for img2img: how much of the input latent is re-noised."),
            ] + kv_inputs() + [
                io.Combo.Input("recipe", options=RECIPE_CHOICES, default=CUSTOM, optional=True,
                               tooltip="custom: the steps, cfg, sampler and scheduler above. Or how a published "
                                       "checkpoint is meant to be sampled, which then sets those four: "
                                       + "; ".join(f"{name}: {recipe.summary}" for name, recipe in RECIPES.items())),
            ],
            outputs=[io.Latent.Output(tooltip="The denoised latent, still carrying the "
                                              "requested size for PixArt VAE Decode.")],
        )

    @classmethod
    def execute(cls, model, positive, latent_image, seed, steps, cfg, sampler_name, scheduler, denoise,
                kv_compress, kv_layers, kv_mode, kv_steps, recipe=CUSTOM, negative=None):
        import nodes  # ComfyUI's core nodes module, imported when it is certainly the host's (the pack's is .nodes)

        steps, cfg, sampler_name, scheduler = recipe_settings(model, recipe, steps, cfg, sampler_name, scheduler)
        for name, value, known in (("sampler_name", sampler_name, comfy.samplers.KSampler.SAMPLERS),
                                   ("scheduler", scheduler, comfy.samplers.KSampler.SCHEDULERS)):
            if value not in known:
                raise ValueError(f"{name} '{value}' is not available in this ComfyUI; choose one of: {', '.join(known)}.")
        if negative is None:
            negative = null_caption_negative(model, positive)
        model = apply_kv(model, kv_compress, kv_layers, kv_mode, kv_steps)
        latent = nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                       latent_image, denoise=denoise)[0]
        summary = f"{steps} steps, cfg {cfg:g}, {sampler_name} / {scheduler}"
        return io.NodeOutput(latent, ui=ui.PreviewText(summary if recipe == CUSTOM else f"{recipe}: {summary}"))
