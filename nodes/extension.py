"""The pack's ComfyUI V3 extension: what it adds to the host when it loads, and the nodes it registers.

Additions the host has no registry for are made once, in on_load (ComfyUI calls it when the extension loads; hosts
that do not call it get it from get_node_list, which runs next): the HTTP routes of the browser extension and the
samplers and schedulers of the published checkpoints' recipes (README, "What the pack adds to ComfyUI"). Nothing of
the host is replaced; other model families sample as before.
"""
import sys

from comfy_api.latest import ComfyExtension, io

from .compile_node import PixArtTorchCompile
from .controlnet import PixArtControlNetLoader
from .kv_compress_node import PixArtKVCompress
from .latent_nodes import PixArtEmptyLatent, PixArtVAEDecode
from .loaders import PixArtDiffusersLoader, PixArtDiTLoader, PixArtT5Loader
from .lora import PixArtLoraLoader
from .pag import PixArtPAG
from .sampler_node import PixArtKVSampler
from .text_encode import PixArtTextEncode
from .two_stage import PixArtTwoStage

_added = False


def register_sampling() -> None:
    """The PixArt schedulers and the published checkpoints' samplers in ComfyUI's lists (before node schemas are
    built, which list them); idempotent."""
    from . import samplers, scheduler

    scheduler.register()
    samplers.register()


def add_to_host() -> None:
    """Our routes, schedulers and samplers, once per process."""
    global _added
    if _added:
        return
    from . import routes

    register_sampling()
    # ComfyUI imports its server before it loads custom nodes; in-process uses without a server add no routes
    prompt_server = getattr(sys.modules.get("server"), "PromptServer", None)
    if getattr(prompt_server, "instance", None) is not None:
        routes.register(prompt_server.instance)
    _added = True


class PixArtExtension(ComfyExtension):
    async def on_load(self) -> None:
        add_to_host()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        add_to_host()  # a host that never calls on_load still gets the additions the nodes need, once
        return [PixArtT5Loader, PixArtDiTLoader, PixArtDiffusersLoader, PixArtTextEncode, PixArtKVSampler,
                PixArtKVCompress, PixArtPAG, PixArtLoraLoader, PixArtTorchCompile, PixArtTwoStage, PixArtEmptyLatent,
                PixArtVAEDecode, PixArtControlNetLoader]
