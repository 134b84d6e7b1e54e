"""PixArt PAG: Perturbed-Attention Guidance on a PixArt MODEL, computing what diffusers' PixArtSigmaPAGPipeline
computes (pixart.pag): identity self-attention in the chosen blocks for a third prediction of the positive prompt,
added after classifier-free guidance with the pipeline's scale and adaptive scale.

Built as core's PerturbedAttentionGuidance is (a post-CFG function and one more model call with the self-attention
replaced), on the DiT's own patch points (attn1 replace at ("double_block", i)): core's node patches a UNet block
and cannot reach a DiT. Works with any sampler node, KV compression and the other model patches.
"""
from __future__ import annotations

import comfy.model_patcher
import comfy.samplers
from comfy_api.latest import io, ui

from ..pixart.pag import (
    DEFAULT_ADAPTIVE_SCALE,
    DEFAULT_LAYERS,
    DEFAULT_SCALE,
    describe_layers,
    identity_attention,
    pag_layers,
    pag_scale_at,
)
from . import host
from .dit_model import pixart_dit
from .patch_points import DIT_BLOCK


def perturbed_self_attention(q, k, v, extra_options):
    """ComfyUI's attn1 replace signature; every token attends to itself only."""
    return identity_attention(q, k, v)


def apply_pag(model, scale: float, adaptive_scale: float, layers: str):
    """(a clone of `model` guided by PAG, the blocks it perturbs); scale 0 returns the model unchanged."""
    dit = pixart_dit(model, "PAG perturbs the PixArt DiT's blocks")
    blocks = pag_layers(layers, dit.config.depth)
    if scale == 0:
        return model, blocks
    model_sampling = model.get_model_object("model_sampling")

    def post_cfg_function(args):
        cfg_result = args["denoised"]
        sigma = args["sigma"]
        step_scale = pag_scale_at(float(model_sampling.timestep(sigma[:1])[0]), scale, adaptive_scale)
        if step_scale == 0:
            return cfg_result
        options = args["model_options"].copy()
        for index in blocks:
            options = comfy.model_patcher.set_model_options_patch_replace(options, perturbed_self_attention, "attn1",
                                                                          DIT_BLOCK, index)
        (perturbed,) = comfy.samplers.calc_cond_batch(args["model"], [args["cond"]], args["input"], sigma, options)
        return cfg_result + (args["cond_denoised"] - perturbed) * step_scale

    guided = model.clone()
    guided.set_model_sampler_post_cfg_function(post_cfg_function)
    return guided, blocks


class PixArtPAG(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return host.schema(
            node_id="PixArtPAG",
            search_aliases=["PAG", "perturbed attention guidance", "PerturbedAttentionGuidance", "guidance", "pixart"],
            display_name="PixArt Perturbed-Attention Guidance",
            category="PixArt/sampling",
            description="Perturbed-Attention Guidance as diffusers' PixArtSigmaPAGPipeline: a third prediction with "
                        "identity self-attention in the chosen blocks steers away from structure errors. Costs one more "
                        "model call per step. Use with PixArt Sampler, KSampler or any sampler.",
            inputs=[
                io.Model.Input("model", tooltip="A MODEL from the PixArt DiT Loader."),
                io.Float.Input("scale", default=DEFAULT_SCALE, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="pag_scale: how far the result moves away from the perturbed prediction "
                                       "(diffusers' default 3.0; 0 = off)."),
                io.Float.Input("adaptive_scale", default=DEFAULT_ADAPTIVE_SCALE, min=0.0, max=1.0, step=0.001,
                               round=0.0001,
                               tooltip="pag_adaptive_scale: the scale falls by this much per timestep below 1000, "
                                       "never under 0 (0 = constant scale)."),
                io.String.Input("layers", default=DEFAULT_LAYERS,
                                tooltip="pag_applied_layers as diffusers reads them: comma-separated regular "
                                        "expressions searched in each block's self-attention name, "
                                        "transformer_blocks.N.attn1. diffusers' default 'blocks.1' matches blocks 1 "
                                        "and 10-19 of a 28-block model; 'blocks.14' block 14 alone."),
            ],
            outputs=[io.Model.Output(tooltip="A clone of the model guided with PAG; the input MODEL is unchanged.")],
        )

    @classmethod
    def execute(cls, model, scale, adaptive_scale, layers):
        guided, blocks = apply_pag(model, scale, adaptive_scale, layers)
        state = "off (scale 0)" if scale == 0 else f"scale {scale:g}" + (
            f", adaptive {adaptive_scale:g}" if adaptive_scale else "")
        return io.NodeOutput(guided, ui=ui.PreviewText(f"PAG {state} on blocks {describe_layers(blocks)}"))
