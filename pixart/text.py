"""Caption rules of the PixArt pipelines: preprocessing, T5 token budget, EOS, padding and mask."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizedCaption:
    ids: list[int]  # exactly max_length ids: tokens, EOS, padding
    mask: list[int]  # 1 for tokens and EOS, 0 for padding
    length: int  # real tokens including EOS
    dropped: int  # tokens cut off beyond the budget


def preprocess_caption(text: str) -> str:
    """diffusers' PixArt preprocessing without its optional caption cleaner: lower case, trimmed."""
    return text.lower().strip()


def tokenize_caption(text: str, encode: Callable[[str], list[int]], eos_id: int, pad_id: int,
                     max_length: int, preprocess: bool = True) -> TokenizedCaption:
    """Tokens + EOS, truncated to max_length (EOS kept last), padded with pad_id.

    `encode` turns text into token ids without special tokens.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}.")
    tokens = list(encode(preprocess_caption(text) if preprocess else text))
    dropped = max(0, len(tokens) - (max_length - 1))
    tokens = tokens[: max_length - 1] + [eos_id]
    if dropped:
        log.warning("Prompt is %d tokens over PixArt's %d-token limit; the end was cut off: %r",
                    dropped, max_length, _tail(text))
    padding = max_length - len(tokens)
    return TokenizedCaption(ids=tokens + [pad_id] * padding, mask=[1] * len(tokens) + [0] * padding,
                            length=len(tokens), dropped=dropped)


def _tail(text: str, words: int = 8) -> str:
    parts = text.split()
    return ("... " if len(parts) > words else "") + " ".join(parts[-words:])
