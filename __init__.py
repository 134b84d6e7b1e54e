"""ComfyUI entry point of PixArt-Σ Nodes: the V3 extension and the browser extension folder."""
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes.extension import PixArtExtension

    return PixArtExtension()
