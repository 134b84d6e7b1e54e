"""Caption rules of the PixArt pipelines: preprocessing, T5 token budget, EOS, padding and mask."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class TokenizedCaption:
    ids: list[int]  # exactly max_length ids: tokens, EOS, padding
    mask: list[int]  # 1 for tokens and EOS, 0 for padding
    length: int  # real tokens including EOS
    dropped: int  # tokens cut off beyond the budget


def preprocess_caption(text: str) -> str:
    """diffusers' PixArt preprocessing without its optional caption cleaner: lower case, trimmed."""
    return text.lower().strip()


def fit_caption(tokens: list[T], eos: T, pad: T, max_length: int) -> tuple[list[T], int, int]:
    """Truncate to max_length - 1 tokens, append EOS, pad to max_length.

    Works on any token representation (ids, or ComfyUI's (id, weight) pairs). -> (tokens, real length, dropped).
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}.")
    dropped = max(0, len(tokens) - (max_length - 1))
    kept = list(tokens[: max_length - 1]) + [eos]
    return kept + [pad] * (max_length - len(kept)), len(kept), dropped


def warn_truncated(text: str, dropped: int, max_length: int) -> None:
    log.warning("Prompt is %d tokens over PixArt's %d-token limit; the end was cut off: %r",
                dropped, max_length, _tail(text))


def tokenize_caption(text: str, encode: Callable[[str], list[int]], eos_id: int, pad_id: int,
                     max_length: int, preprocess: bool = True) -> TokenizedCaption:
    """Tokens + EOS, truncated to max_length (EOS kept last), padded with pad_id.

    `encode` turns text into token ids without special tokens.
    """
    ids, length, dropped = fit_caption(encode(preprocess_caption(text) if preprocess else text), eos_id, pad_id,
                                       max_length)
    if dropped:
        warn_truncated(text, dropped, max_length)
    return TokenizedCaption(ids=ids, mask=[1] * length + [0] * (max_length - length), length=length, dropped=dropped)


def _tail(text: str, words: int = 8) -> str:
    parts = text.split()
    return ("... " if len(parts) > words else "") + " ".join(parts[-words:])
