"""The negative prompt PixArt's authors sample with when none is given: the checkpoint's learned empty caption."""
from __future__ import annotations

import torch

from .dit_model import pixart_dit


def null_caption_negative(model, positive):
    """Negative conditioning from the checkpoint's learned empty caption (the official PixArt CFG), carrying
    the positive's attention mask as the official samplers do, and its ControlNet."""
    null = pixart_dit(model).null_caption(1).detach().to("cpu", torch.float32)  # (1, L, C)
    negative = []
    for _, extras in positive:
        # a ControlNet applied to the positive conditions the learned-null negative too, as the official pipeline does
        entry = {k: v for k, v in extras.items() if k in ("width", "height", "aspect_ratio", "control")}
        mask = extras.get("attention_mask")
        if mask is not None and mask.shape[-1] == null.shape[1]:
            entry["attention_mask"] = mask
        negative.append([null.clone(), entry])
    return negative
