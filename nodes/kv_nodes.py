"""KV compression as a per-run MODEL patch and as a one-node sampler with diffusers-exact defaults.

The patch clones the ModelPatcher and sets transformer_options; the loaded model is never changed, so the
same MODEL can run compressed and uncompressed side by side.
"""
from __future__ import annotations

import logging

import comfy.samplers
import torch
from comfy_api.latest import io, ui

from ..pixart.kv_compress import MODES, KVCompress, parse_layers
from ..pixart.recipes import CUSTOM, RECIPE_CHOICES, RECIPES
from . import host
from .dit_model import KV_COMPRESS_OPTION, KV_STEPS_OPTION, pixart_dit
from .scheduler import REFERENCE_SCHEDULER

log = logging.getLogger(__name__)
_warned: set[tuple[str, str]] = set()  # (recipe, model) pairs whose mismatch was logged

KV_RATIOS = {"off": 1, "2x2": 2, "3x3": 3, "4x4": 4}


def kv_inputs() -> list:
    return [
        io.Combo.Input("kv_compress", options=list(KV_RATIOS), default="off",
                       tooltip="PixArt-Σ KV token compression: keys/values of self-attention downsampled s×s in the "
                               "chosen layers (queries keep full length). 2x2 cuts those layers' attention cost ~4x; "
                               "trades some detail for speed at 2K/4K."),
        io.String.Input("kv_layers", default="",
                        tooltip="Blocks to compress, e.g. '14-27' or '0,4,8-11' or 'all'. Empty = the deep half "
                                "(14-27 of 28), the paper's best placement, scaled to the model's depth."),
        io.Combo.Input("kv_mode", options=list(MODES), default="avg",
                       tooltip="avg: window mean (training-free); nearest: official 'ave' (nearest sampling); "
                               "uniform: every s-th token; conv: the checkpoint's trained conv (only if it has one)."),
        io.Float.Input("kv_steps", default=1.0, min=0.0, max=1.0, step=0.05,
                       tooltip="Fraction of the steps run (after denoise, on any scheduler), from the first, that run "
                               "compressed, rounded up; later steps run in full to restore detail. 1.0 = all steps."),
    ]


def apply_kv(model, kv_compress: str, kv_layers: str, kv_mode: str, kv_steps: float):
    """Clone with the KV setting in transformer_options; 'off' returns the model unchanged."""
    if kv_compress not in KV_RATIOS:
        raise ValueError(f"kv_compress '{kv_compress}' is unknown; choose one of: {', '.join(KV_RATIOS)}.")
    ratio = KV_RATIOS[kv_compress]
    if ratio == 1 or kv_steps <= 0.0:
        return model
    dit = pixart_dit(model)
    setting = KVCompress(ratio, parse_layers(kv_layers, dit.config.depth), kv_mode)
    dit.check_kv_compress(setting)
    patched = model.clone()
    options = dict(patched.model_options.get("transformer_options", {}))
    options[KV_COMPRESS_OPTION] = setting
    options[KV_STEPS_OPTION] = float(kv_steps)
    patched.model_options = {**patched.model_options, "transformer_options": options}
    return patched


def null_caption_negative(model, positive):
    """Negative conditioning from the checkpoint's learned empty caption (the official PixArt CFG), carrying
    the positive's attention mask as the official samplers do, and its ControlNet."""
    null = pixart_dit(model).null_caption(1).detach().to("cpu", torch.float32)  # (1, L, C)
    negative = []
    for _, extras in positive:
        # a ControlNet applied to the positive conditions the learned-null negative too, as the official pipeline does
        entry = {k: v for k, v in extras.items() if k in ("width", "height", "aspect_ratio", "control")}
        mask = extras.get("attention_mask")
        if mask is not None and mask.shape[-1] == null.shape[1]:
            entry["attention_mask"] = mask
        negative.append([null.clone(), entry])
    return negative


class PixArtKVCompress(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return host.schema(
            node_id="PixArtKVCompress",
            search_aliases=["KV compression", "token compression", "2K", "4K", "speed up", "KSampler", "pixart"],
            display_name="PixArt KV Compression",
            category="PixArt/sampling",
            description="Returns a copy of the MODEL that runs with KV token compression, for KSampler and "
                        "SamplerCustomAdvanced. The input MODEL is not changed.",
            inputs=[io.Model.Input("model", tooltip="A MODEL from the PixArt DiT Loader.")] + kv_inputs(),
            outputs=[io.Model.Output(tooltip="A clone of the model that samples with KV compression, "
                                             "for KSampler or SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, kv_compress, kv_layers, kv_mode, kv_steps):
        return io.NodeOutput(apply_kv(model, kv_compress, kv_layers, kv_mode, kv_steps))


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
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="dpmpp_2m",
                               tooltip="Any ComfyUI sampler; dpmpp_2m is the reference DPM-Solver++ 2M."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default=REFERENCE_SCHEDULER,
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
        steps, cfg, sampler_name, scheduler = recipe_settings(model, recipe, steps, cfg, sampler_name, scheduler)
        for name, value, known in (("sampler_name", sampler_name, comfy.samplers.KSampler.SAMPLERS),
                                   ("scheduler", scheduler, comfy.samplers.KSampler.SCHEDULERS)):
            if value not in known:
                raise ValueError(f"{name} '{value}' is not available in this ComfyUI; choose one of: {', '.join(known)}.")
        if negative is None:
            negative = null_caption_negative(model, positive)
        model = apply_kv(model, kv_compress, kv_layers, kv_mode, kv_steps)
        latent = sample(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise)
        summary = f"{steps} steps, cfg {cfg:g}, {sampler_name} / {scheduler}"
        return io.NodeOutput(latent, ui=ui.PreviewText(summary if recipe == CUSTOM else f"{recipe}: {summary}"))


def recipe_settings(model, recipe: str, steps: int, cfg: float, sampler_name: str, scheduler: str):
    """(steps, cfg, sampler, scheduler): the node's own for 'custom', else the recipe's; a recipe published for other
    checkpoints runs, with one warning in the log per recipe and model."""
    if recipe == CUSTOM:
        return steps, cfg, sampler_name, scheduler
    chosen = RECIPES.get(recipe)
    if chosen is None:
        raise ValueError(f"recipe '{recipe}' is unknown; choose one of: {', '.join(RECIPE_CHOICES)}.")
    config = pixart_dit(model, "a recipe is for a PixArt checkpoint").config
    mismatch = chosen.mismatch(config)
    if mismatch and (recipe, config.describe()) not in _warned:
        _warned.add((recipe, config.describe()))
        published = "PixArt-" + {"alpha": "α", "sigma": "Σ"}.get(chosen.family, "") + (
            f" {chosen.trained_resolution}" if chosen.trained_resolution else "")
        log.warning("PixArt recipe '%s' is published for %s checkpoints; this model differs (%s: %s). It runs, but "
                    "the result is not what the recipe was made for.", recipe, published, mismatch, config.describe())
    return chosen.steps, chosen.cfg, chosen.sampler, chosen.scheduler


def sample(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent: dict, denoise: float) -> dict:
    """ComfyUI's sampling path, the one KSampler runs (nodes.common_ksampler): seeded CPU noise, the latent's channel
    and downscale fixes, noise masks, previews, progress bar."""
    import nodes  # ComfyUI's core nodes module (this pack's own is .nodes)

    return nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                                 denoise=denoise)[0]
