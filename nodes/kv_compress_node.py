"""KV compression as a per-run MODEL patch (PixArt KV Compression) and the four KV inputs the sampler node shares.

The patch clones the ModelPatcher and sets transformer_options; the loaded model is never changed, so the same MODEL
can run compressed and uncompressed side by side. The DiT reads the setting per model call (dit_model.kv_for_call).
"""
from __future__ import annotations

from comfy_api.latest import io

from ..pixart.kv_compress import MODES, KVCompress, parse_layers
from . import host
from .dit_model import KV_COMPRESS_OPTION, KV_STEPS_OPTION, pixart_dit

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
