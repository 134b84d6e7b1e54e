"""What happened to a LATENT on its way into a node, read from the prompt ComfyUI is running.

Core latent nodes copy the LATENT dict they are given (LatentUpscale, LatentUpscaleBy, LatentCrop, LatentComposite,
LatentBatch, the samplers), so the size PixArt Empty Latent asked for travels with the latent. Whether a size was
then set explicitly cannot be seen in the latent itself (an upscale to a stated size and an upscale by the same
factor give the same tensor), so PixArt VAE Decode asks the prompt.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# Core nodes that give the latent a size the user states (rather than a factor of the size it had).
SIZE_SETTING = {"LatentUpscale": "Upscale Latent to a stated size", "LatentCrop": "Crop Latent"}


def _latent_inputs(class_type: str) -> list[str]:
    """The LATENT inputs of a node class, in declaration order (the first is where the output's LATENT comes from)."""
    import nodes

    node_class = nodes.NODE_CLASS_MAPPINGS.get(class_type)
    if node_class is None:
        return []
    try:
        declared = node_class.INPUT_TYPES()
    except Exception as err:  # a broken third-party node must not stop the decode
        log.debug("INPUT_TYPES of %s failed: %s", class_type, err)
        return []
    names = []
    for group in ("required", "optional"):
        for name, spec in (declared.get(group) or {}).items():
            if isinstance(spec, (tuple, list)) and spec and spec[0] == "LATENT":
                names.append(name)
    return names


def size_set_on_the_way(prompt: dict | None, node_id: str | None, input_name: str) -> str | None:
    """The name of the first node on the LATENT path into `input_name` of `node_id` that set a size explicitly,
    walking up through each node's first connected LATENT input to where the latent was made; None if none did
    (or the prompt is not available)."""
    if not prompt or node_id is None:
        return None
    seen = set()
    node, name = prompt.get(str(node_id)), input_name
    while node is not None:
        link = (node.get("inputs") or {}).get(name)
        if not (isinstance(link, list) and len(link) == 2) or str(link[0]) in seen:
            return None
        source_id = str(link[0])
        seen.add(source_id)
        node = prompt.get(source_id)
        if node is None:
            return None
        class_type = node.get("class_type", "")
        if class_type in SIZE_SETTING:
            return SIZE_SETTING[class_type]
        linked = [n for n in _latent_inputs(class_type) if isinstance((node.get("inputs") or {}).get(n), list)]
        if not linked:
            return None
        name = linked[0]
    return None
