"""The pack's ComfyUI V3 extension: the list of nodes it registers."""
from comfy_api.latest import ComfyExtension, io

from .kv_nodes import PixArtKVCompress, PixArtKVSampler
from .latent_nodes import PixArtEmptyLatent, PixArtVAEDecode
from .loaders import PixArtDiffusersLoader, PixArtDiTLoader, PixArtT5Loader
from .text_encode import PixArtTextEncode


class PixArtExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [PixArtT5Loader, PixArtDiTLoader, PixArtDiffusersLoader, PixArtTextEncode, PixArtKVSampler,
                PixArtKVCompress, PixArtEmptyLatent, PixArtVAEDecode]


def register_routes() -> None:
    """Add our HTTP routes to ComfyUI's server; called from comfy_entrypoint, before the server's routes are frozen."""
    from server import PromptServer

    from . import routes

    if getattr(PromptServer, "instance", None) is not None:
        routes.register(PromptServer.instance)
