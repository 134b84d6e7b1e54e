"""An optional torch.compile switch for the PixArt DiT, through ComfyUI's own compile wrapper.

ComfyUI's `set_torch_compile_wrapper` swaps compiled modules in only while the model runs (an APPLY_MODEL
wrapper) and back out after, so model patching (LoRA, weight dtype casts, lowvram partial loading) keeps
working on the real modules. We compile each transformer block rather than the whole DiT: the blocks are
pure tensor code, while the model around them does data-dependent work (caption padding trim, the per-run
caption cache) that would break the graph. A KV compression setting or a new image size adds a graph per block.
"""
from __future__ import annotations

from comfy_api.latest import io
from comfy_api.torch_helpers import set_torch_compile_wrapper

from . import host
from .dit_model import pixart_dit

BACKENDS = ["inductor", "cudagraphs", "aot_eager"]
MODES = ["default", "max-autotune-no-cudagraphs", "max-autotune"]


def compile_blocks(model, backend: str, mode: str):
    """A clone of the MODEL whose DiT blocks run compiled at sampling time; the input MODEL is unchanged."""
    for name, value, known in (("backend", backend, BACKENDS), ("mode", mode, MODES)):
        if value not in known:
            raise ValueError(f"{name} '{value}' is unknown; choose one of: {', '.join(known)}.")
    dit = pixart_dit(model, "this node compiles PixArt's blocks (ComfyUI's TorchCompileModel compiles other models)")
    depth = dit.config.depth
    compiled = host.clone_without_dynamic(model)  # as core's TorchCompileModel clones
    set_torch_compile_wrapper(model=compiled, backend=backend, mode=None if mode == "default" else mode,
                              keys=[f"diffusion_model.blocks.{i}" for i in range(depth)])
    return compiled


class PixArtTorchCompile(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return host.schema(
            node_id="PixArtTorchCompile",
            search_aliases=["torch.compile", "TorchCompileModel", "compile", "speed up", "pixart"],
            display_name="PixArt torch.compile",
            category="PixArt/sampling",
            description="Compiles the DiT's transformer blocks with torch.compile at sampling time. The first run "
                        "compiles (tens of seconds); later runs at the same size are faster. Safe with LoRA and "
                        "other model patches, which apply to the uncompiled weights as usual.",
            inputs=[
                io.Model.Input("model", tooltip="A MODEL from the PixArt DiT Loader (LoRAs may be applied before "
                                                "or after this node)."),
                io.Combo.Input("backend", options=BACKENDS, default="inductor",
                               tooltip="inductor: generated fused kernels (needs a C++ compiler on CPU, Triton on "
                                       "GPU). cudagraphs: replays CUDA graphs, no code generation. aot_eager: traces "
                                       "only; for checking that compilation works."),
                io.Combo.Input("mode", options=MODES, default="default",
                               tooltip="inductor mode. max-autotune tries more kernels: a much longer first run "
                                       "for a few percent; '-no-cudagraphs' leaves out CUDA graphs."),
            ],
            outputs=[io.Model.Output(tooltip="The model, compiled block by block while "
                                             "it samples; the input MODEL is unchanged.")],
        )

    @classmethod
    def execute(cls, model, backend, mode):
        return io.NodeOutput(compile_blocks(model, backend, mode))
