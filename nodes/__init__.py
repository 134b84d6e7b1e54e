"""ComfyUI adapters for the PixArt engine. Imported only inside ComfyUI."""
