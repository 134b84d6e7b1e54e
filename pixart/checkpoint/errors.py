"""How a checkpoint that cannot be used is reported: a CheckpointError naming the file, what it looks like and what to
do; and the one rule every loader applies after placing weights (engine, ComfyUI DiT, ControlNet and T5 loaders)."""
from __future__ import annotations

from collections.abc import Sequence


class CheckpointError(ValueError):
    """A file or folder that cannot be loaded as asked; the message names it and says what to do."""


def require_fit(source: str, what: str, missing: Sequence[str], unused: Sequence[str]) -> None:
    """A file loads completely or not at all: parameters it left unfilled or tensors it holds that nothing took are a
    CheckpointError naming the file and the first of each (`what`: the model they were read into)."""
    if missing or unused:
        raise CheckpointError(f"{source}: weights do not fit {what}: missing {list(missing)[:6]}, unused "
                              f"{list(unused)[:6]}.")
