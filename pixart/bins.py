"""Aspect-ratio bins: the (height, width) pairs PixArt was trained on, and choosing the nearest one.

The tables are the published PixArt multi-aspect training buckets (PixArt-α/Σ repositories; the same
values as diffusers' ASPECT_RATIO_*_BIN). Keys are height/width ratios as written there; the 512 and 256
tables are the 1024 table halved and quartered.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# (ratio key, height, width) at 1024 px, in the published order (ties resolve to the earlier entry).
_BINS_1024 = (
    ("0.25", 512, 2048), ("0.28", 512, 1856), ("0.32", 576, 1792), ("0.33", 576, 1728), ("0.35", 576, 1664),
    ("0.4", 640, 1600), ("0.42", 640, 1536), ("0.48", 704, 1472), ("0.5", 704, 1408), ("0.52", 704, 1344),
    ("0.57", 768, 1344), ("0.6", 768, 1280), ("0.68", 832, 1216), ("0.72", 832, 1152), ("0.78", 896, 1152),
    ("0.82", 896, 1088), ("0.88", 960, 1088), ("0.94", 960, 1024), ("1.0", 1024, 1024), ("1.07", 1024, 960),
    ("1.13", 1088, 960), ("1.21", 1088, 896), ("1.29", 1152, 896), ("1.38", 1152, 832), ("1.46", 1216, 832),
    ("1.67", 1280, 768), ("1.75", 1344, 768), ("2.0", 1408, 704), ("2.09", 1472, 704), ("2.4", 1536, 640),
    ("2.5", 1600, 640), ("3.0", 1728, 576), ("4.0", 2048, 512),
)
_BINS_2048 = (
    ("0.25", 1024, 4096), ("0.26", 1024, 3968), ("0.27", 1024, 3840), ("0.28", 1024, 3712),
    ("0.32", 1152, 3584), ("0.33", 1152, 3456), ("0.35", 1152, 3328), ("0.4", 1280, 3200),
    ("0.42", 1280, 3072), ("0.48", 1408, 2944), ("0.5", 1408, 2816), ("0.52", 1408, 2688),
    ("0.57", 1536, 2688), ("0.6", 1536, 2560), ("0.68", 1664, 2432), ("0.72", 1664, 2304),
    ("0.78", 1792, 2304), ("0.82", 1792, 2176), ("0.88", 1920, 2176), ("0.94", 1920, 2048),
    ("1.0", 2048, 2048), ("1.07", 2048, 1920), ("1.13", 2176, 1920), ("1.21", 2176, 1792),
    ("1.29", 2304, 1792), ("1.38", 2304, 1664), ("1.46", 2432, 1664), ("1.67", 2560, 1536),
    ("1.75", 2688, 1536), ("2.0", 2816, 1408), ("2.09", 2944, 1408), ("2.4", 3072, 1280),
    ("2.5", 3200, 1280), ("2.89", 3328, 1152), ("3.0", 3456, 1152), ("3.11", 3584, 1152),
    ("3.62", 3712, 1024), ("3.75", 3840, 1024), ("3.88", 3968, 1024), ("4.0", 4096, 1024),
)


def _table(rows, divisor: int = 1) -> dict[str, tuple[int, int]]:
    return {key: (h // divisor, w // divisor) for key, h, w in rows}


ASPECT_RATIO_BINS: dict[int, dict[str, tuple[int, int]]] = {
    256: _table(_BINS_1024, 4),
    512: _table(_BINS_1024, 2),
    1024: _table(_BINS_1024),
    2048: _table(_BINS_2048),
}


MODEL_BINS, NO_BINS = "model", "off"
BINNING_CHOICES = [MODEL_BINS, NO_BINS] + [str(size) for size in ASPECT_RATIO_BINS]  # a table, the model's, or none
SIZE_MULTIPLE = 16  # latent sides are whole patches: VAE factor 8 x patch 2
LATENT_PIXEL = 8  # image pixels per latent pixel


def generation_size(height: int, width: int, binning: str, trained_resolution: int | None = None) -> tuple[int, int]:
    """The (height, width) to generate at for a requested size: the nearest trained bin of the chosen table (the
    model's own for MODEL_BINS), or with NO_BINS the request rounded to SIZE_MULTIPLE."""
    if binning not in BINNING_CHOICES:
        raise ValueError(f"binning '{binning}' is unknown; choose one of: {', '.join(BINNING_CHOICES)}.")
    if binning == NO_BINS:
        return tuple(max(SIZE_MULTIPLE, round(side / SIZE_MULTIPLE) * SIZE_MULTIPLE) for side in (height, width))
    if binning == MODEL_BINS:
        if trained_resolution is None:
            raise ValueError("binning 'model' takes the bins from the model's trained size: connect the MODEL input, "
                             "or choose a bin table (256/512/1024/2048) or 'off'.")
        table = bins_for_resolution(trained_resolution)
    else:
        table = ASPECT_RATIO_BINS[int(binning)]
    return nearest_bin(height, width, table)


def bins_for_resolution(resolution: int) -> dict[str, tuple[int, int]]:
    """The bin table for a model trained at `resolution` px (the nearest published table)."""
    nearest = min(ASPECT_RATIO_BINS, key=lambda size: abs(size - resolution))
    return ASPECT_RATIO_BINS[nearest]


def nearest_bin(height: int, width: int, bins: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """The trained (height, width) whose aspect ratio is closest to height/width."""
    aspect = float(height / width)
    key = min(bins, key=lambda ratio: abs(float(ratio) - aspect))
    return bins[key]


def resize_and_crop(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale a binned image to cover (height, width), bilinear, then centre-crop. (B, C, h, w) -> (B, C, height, width)."""
    src_h, src_w = images.shape[-2:]
    if (src_h, src_w) == (height, width):
        return images
    scale = max(height / src_h, width / src_w)
    new_h, new_w = int(src_h * scale), int(src_w * scale)
    images = F.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return images[..., top:top + height, left:left + width]


def resize_back_size(requested: tuple[int, int], binned: tuple[int, int], current: tuple[int, int],
                     size_set_since: bool = False) -> tuple[int, int] | None:
    """The (height, width) an image decoded at `current` px is resized back to, or None to keep it as decoded.

    The image was generated at the bin `binned` for the `requested` size. Unchanged, it goes back to `requested`
    (diffusers' use_resolution_binning). Scaled by the same factor on both axes since (upscale by 1.5x or 2x for a
    hires-fix pass) it goes back to the request scaled by that factor. When a size was set explicitly since
    (`size_set_since`: an upscale to a stated size, a crop) or the latent changed shape in any other way, the decoded
    size is what was asked for last, and it is kept.
    """
    if current == binned:
        return requested
    if size_set_since:
        return None
    long = 0 if binned[0] >= binned[1] else 1
    scale = current[long] / binned[long]  # from the longer side: the other may be rounded to a whole latent pixel
    if abs(current[1 - long] - binned[1 - long] * scale) > LATENT_PIXEL:
        return None
    return round(requested[0] * scale), round(requested[1] * scale)
