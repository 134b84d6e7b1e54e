"""The pack's ComfyUI V3 extension: the list of nodes it registers."""
from comfy_api.latest import ComfyExtension, io

from .compile_node import PixArtTorchCompile
from .controlnet import PixArtControlNetLoader
from .kv_nodes import PixArtKVCompress, PixArtKVSampler
from .latent_nodes import PixArtEmptyLatent, PixArtVAEDecode
from .loaders import PixArtDiffusersLoader, PixArtDiTLoader, PixArtT5Loader
from .text_encode import PixArtTextEncode
from .two_stage import PixArtTwoStage


class PixArtExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [PixArtT5Loader, PixArtDiTLoader, PixArtDiffusersLoader, PixArtTextEncode, PixArtKVSampler,
                PixArtKVCompress, PixArtTorchCompile, PixArtTwoStage, PixArtEmptyLatent, PixArtVAEDecode,
                PixArtControlNetLoader]


def register_sampling() -> None:
    """The PixArt schedulers and the published checkpoints' samplers in ComfyUI's lists (before node schemas are
    built, which list them)."""
    from . import samplers, scheduler

    scheduler.register()
    samplers.register()


def install_host_hooks() -> None:
    """Our HTTP routes, LoRA layouts, schedulers and samplers; called from comfy_entrypoint, before the server freezes
    its routes."""
    from server import PromptServer

    from . import lora, routes

    lora.install()
    register_sampling()

    if getattr(PromptServer, "instance", None) is not None:
        routes.register(PromptServer.instance)
