"""The pack's ComfyUI V3 extension: the list of nodes it registers."""
from comfy_api.latest import ComfyExtension, io


class PixArtExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return []
