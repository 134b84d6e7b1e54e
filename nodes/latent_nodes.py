"""PixArtEmptyLatent (aspect-ratio bins) and PixArtVAEDecode (auto tiling, resize back to the requested size)."""
from __future__ import annotations

import logging

import comfy.model_management
import torch
from comfy_api.latest import io, ui

from ..pixart.bins import BINNING_CHOICES, MODEL_BINS, generation_size, resize_and_crop, resize_back_size
from . import host
from .dit_model import pixart_dit
from .latent_path import size_set_on_the_way

log = logging.getLogger(__name__)

TARGET_SIZE_KEY = "pixart_target_size"  # (height, width) px asked for, that binning moved away from
BINNED_SIZE_KEY = "pixart_binned_size"  # (height, width) px the latent was made at for that request


def binned_size(height: int, width: int, binning: str, model=None) -> tuple[int, int]:
    """The (height, width) to generate at; binning 'model' reads the connected model's trained size."""
    trained = pixart_dit(model).config.trained_resolution if model is not None else None
    return generation_size(height, width, binning, trained)


class PixArtEmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return host.schema(
            node_id="PixArtEmptyLatent",
            search_aliases=["empty latent", "EmptyLatentImage", "resolution", "aspect ratio", "bins", "size", "pixart"],
            display_name="PixArt Empty Latent",
            category="PixArt/latent",
            description="An empty latent at the trained aspect-ratio bin nearest to the requested size (as diffusers' "
                        "use_resolution_binning); PixArt VAE Decode resizes the image back to the requested size.",
            inputs=[
                io.Int.Input("width", default=1024, min=64, max=16384, step=16, tooltip="Requested image width (px)."),
                io.Int.Input("height", default=1024, min=64, max=16384, step=16, tooltip="Requested image height (px)."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Images per run."),
                io.Combo.Input("binning", options=BINNING_CHOICES, default=MODEL_BINS,
                               tooltip="model: bins of the connected model's trained size (1024 bins for a 1024 model, "
                                       "2048 for 2K); a number: that table; off: the requested size rounded to 16 px."),
                io.Model.Input("model", optional=True, tooltip="The PixArt MODEL, for binning 'model'."),
            ],
            outputs=[io.Latent.Output(tooltip="Zeros at the binned size, carrying the "
                                              "requested size for PixArt VAE Decode.")],
        )

    @classmethod
    def execute(cls, width, height, batch_size, binning, model=None):
        gen_h, gen_w = binned_size(height, width, binning, model)
        latent = torch.zeros([batch_size, 4, gen_h // 8, gen_w // 8], device=comfy.model_management.intermediate_device())
        out = {"samples": latent}
        summary = f"{width}x{height}"
        if (gen_h, gen_w) != (height, width):
            out[TARGET_SIZE_KEY] = (height, width)
            out[BINNED_SIZE_KEY] = (gen_h, gen_w)
            summary += f" -> generated at {gen_w}x{gen_h}, resized back after decoding"
            log.info("PixArt latent: requested %dx%d, generating at %dx%d", width, height, gen_w, gen_h)
        return io.NodeOutput(out, ui=ui.PreviewText(summary))


class PixArtVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return host.schema(
            node_id="PixArtVAEDecode",
            search_aliases=["VAE decode", "VAEDecode", "resolution", "tiled decode", "pixart"],
            display_name="PixArt VAE Decode",
            category="PixArt/latent",
            description="Decodes with ComfyUI's VAE, tiling when the decode would not fit (2K/4K), and resizes "
                        "binned images back to the requested size (bilinear + centre crop, as diffusers); a latent "
                        "upscaled by a factor since (hires-fix) goes back to the request times that factor, one given "
                        "a stated size (Upscale Latent, Crop Latent) keeps it.",
            inputs=[
                io.Latent.Input("samples", tooltip="The sampled latent."),
                io.Vae.Input("vae", tooltip="SDXL VAE for PixArt-Σ, SD1.5 VAE for PixArt-α."),
                io.Combo.Input("tiling", options=["auto", "on", "off"], default="auto",
                               tooltip="auto: tile only when the whole decode would not fit in memory; on: always "
                                       "tile (overlapping, blended tiles: no seams); off: never tile up front."),
                io.Int.Input("tile_size", default=1024, min=256, max=4096, step=64,
                             tooltip="Tile side in pixels when tiling."),
            ],
            outputs=[io.Image.Output(tooltip="The decoded image, resized back to the requested "
                                             "size when the latent was binned or rounded.")],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, samples, vae, tiling, tile_size):
        latent = samples["samples"]
        if tiling == "on" or (tiling == "auto" and _too_big(vae, latent)):
            tile = tile_size // 8
            images = vae.decode_tiled(latent, tile_x=tile, tile_y=tile, overlap=max(4, tile // 8))
        else:
            images = vae.decode(latent)  # ComfyUI still falls back to tiles if it runs out of memory
        if images.ndim == 5:  # (B, T, H, W, C) from video VAEs
            images = images.reshape(-1, *images.shape[-3:])
        target = resize_target(samples, tuple(images.shape[1:3]), cls.hidden.prompt, cls.hidden.unique_id)
        if target is not None:
            images = resize_and_crop(images.movedim(-1, 1), *target).movedim(1, -1)  # (B, H, W, C)
        return io.NodeOutput(images)


def resize_target(samples: dict, decoded: tuple[int, int], prompt=None, node_id=None) -> tuple[int, int] | None:
    """The size a decoded binned image goes back to (pixart.bins.resize_back_size), or None to keep it."""
    requested = samples.get(TARGET_SIZE_KEY)
    if requested is None:
        return None
    binned = tuple(samples.get(BINNED_SIZE_KEY) or decoded)  # LATENTs saved before the binned size was kept
    stated = size_set_on_the_way(prompt, node_id, "samples") if decoded != binned else None
    target = resize_back_size(tuple(requested), binned, decoded, size_set_since=stated is not None)
    if target is None:
        log.info("PixArt VAE Decode: keeping the decoded %dx%d (%s since the %dx%d request)", decoded[1], decoded[0],
                 f"{stated} set it" if stated else "the latent changed shape", requested[1], requested[0])
    return target


def _too_big(vae, latent: torch.Tensor) -> bool:
    needed = vae.memory_used_decode(latent.shape, vae.vae_dtype)
    return needed > 0.75 * comfy.model_management.get_total_memory(vae.device)
