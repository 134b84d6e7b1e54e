"""PixArt's caption rules, as the nodes and the browser route run them.

What diffusers' PixArt pipelines do to a prompt (lower case, trimmed, or their caption cleaner when asked for; T5
tokens; truncated to the budget with EOS kept last; padded with an attention mask: 300 tokens for PixArt-Σ, 120 for
PixArt-α, any budget up to 300 as their max_sequence_length), plus the prompt syntax
ComfyUI users write: `(words:1.2)` weights, `(words)` for x1.1 (nested brackets multiply), `\\(` `\\)` for literal
brackets, and `embedding:name` textual-inversion references (kept as written, case included). Without brackets or
embeddings, a prompt gives exactly the pipeline's ids and mask.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .caption_clean import clean_caption

log = logging.getLogger(__name__)

EMBEDDING_PREFIX = "embedding:"
BRACKET_WEIGHT = 1.1  # what one unweighted pair of brackets multiplies by
_ESCAPED = {"\\(": "\0\2", "\\)": "\0\1"}
_EMBEDDING = re.compile(r"(?:(?<=\s)|^)" + re.escape(EMBEDDING_PREFIX))

Token = "int | torch.Tensor"  # a T5 token id, or one row of an embedding's vectors


@dataclass(frozen=True)
class CaptionTokens:
    """A caption fitted to its budget: `tokens` is exactly max_length (token, weight, word id) entries."""

    tokens: list[tuple]  # (T5 id or embedding vector, weight, word id); word id 0 for EOS and padding
    length: int  # real tokens including EOS: the attention mask's ones
    dropped: int  # tokens cut off beyond the budget

    @property
    def ids(self) -> list[int]:
        return [token for token, _, _ in self.tokens]

    @property
    def weights(self) -> list[float]:
        return [weight for _, weight, _ in self.tokens]

    @property
    def mask(self) -> list[int]:
        return [1] * self.length + [0] * (len(self.tokens) - self.length)


def preprocess_caption(text: str) -> str:
    """diffusers' PixArt preprocessing without its optional caption cleaner (lower case, trimmed), leaving
    `embedding:Name` references as written."""
    parts = re.split(r"(embedding:\S+)", text.strip())
    return "".join(part if part.startswith(EMBEDDING_PREFIX) else part.lower() for part in parts)


def _split_brackets(text: str) -> list[str]:
    """Top-level pieces: plain text and whole '(...)' groups (nesting kept inside the group). A ')' with no '(' to
    close makes the brackets after it literal, as in ComfyUI."""
    pieces, current, depth = [], "", 0
    for char in text:
        if char == "(":
            if depth == 0:
                if current:
                    pieces.append(current)
                current = ""
            current += char
            depth += 1
        elif char == ")":
            depth -= 1
            current += char
            if depth == 0:
                pieces.append(current)
                current = ""
        else:
            current += char
    if current:
        pieces.append(current)
    return pieces


def _weighted(text: str, weight: float) -> list[tuple[str, float]]:
    out = []
    for piece in _split_brackets(text):
        if len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")":
            inner, inner_weight = piece[1:-1], weight * BRACKET_WEIGHT
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    inner, inner_weight = inner[:colon], float(inner[colon + 1:])
                except ValueError:
                    pass  # a colon that is part of the words
            out += _weighted(inner, inner_weight)
        else:
            out.append((piece, weight))
    return out


def parse_weights(text: str) -> list[tuple[str, float]]:
    """'a (red:1.5) ((dog))' -> [('a ', 1.0), ('red', 1.5), ('dog', 1.21)]; '\\(' and '\\)' stay literal."""
    for literal, marker in _ESCAPED.items():
        text = text.replace(literal, marker)
    segments = _weighted(text, 1.0)
    restored = []
    for segment, weight in segments:
        for literal, marker in _ESCAPED.items():
            segment = segment.replace(marker, literal[1])
        restored.append((segment, weight))
    return restored


def _chunks(segment: str) -> list[tuple[str, bool]]:
    """A segment -> [(text, is_embedding_reference)] in order: the words up to an `embedding:` reference (at the start
    or after white space), then the reference (up to the next white space) and the words after it, single-spaced."""
    parts = _EMBEDDING.split(segment)
    out = [(parts[0], False)] if parts[0] else []
    for part in parts[1:]:
        words = part.split()
        if words:
            out.append((words[0], True))
        if len(words) > 1:
            out.append((" ".join(words[1:]), False))
    return out


def _embedding_vectors(name: str, embedding) -> tuple[torch.Tensor | None, str]:
    """(vectors, leftover text): the name as written, else without trailing commas (which then stay as text)."""
    vectors = embedding(name)
    bare = name.rstrip(",")
    if vectors is None and bare != name:
        return embedding(bare), name[len(bare):]
    return vectors, ""


def warn_truncated(text: str, dropped: int, max_length: int) -> None:
    log.warning("Prompt is %d tokens over PixArt's %d-token limit; the end was cut off: %r",
                dropped, max_length, _tail(text))


def tokenize_caption(text: str, encode: Callable[[str], list[int]], eos_id: int, pad_id: int, max_length: int,
                     embedding: Callable[[str], torch.Tensor | None] | None = None, clean: bool = False) -> CaptionTokens:
    """A prompt -> its tokens, fitted to max_length: truncated to max_length - 1 (with a warning saying how many were
    cut), EOS, padding.

    `encode` turns text into T5 ids without special tokens. `embedding(name)` returns a textual-inversion embedding,
    (n, d) or (d,), or None when there is none (the reference is then dropped with a warning); without it,
    `embedding:` references are read as words. `clean`: diffusers' caption cleaner (pixart.caption_clean) on each
    piece of text once the weight syntax and embedding references are parsed out, so `(word:1.2)` keeps working.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}.")
    tokens: list[tuple] = []
    segments = parse_weights(preprocess_caption(text))
    pieces = [(chunk, weight, reference) for segment, weight in segments for chunk, reference in _chunks(segment)]
    while pieces:
        chunk, weight, reference = pieces.pop(0)
        if reference and embedding is not None:
            vectors, leftover = _embedding_vectors(chunk, embedding)
            if leftover:
                pieces.insert(0, (leftover, weight, False))
            if vectors is None:
                log.warning("embedding:%s does not exist, ignoring it", chunk)
                continue
            word = tokens[-1][2] + 1 if tokens else 1
            tokens += [(row, weight, word) for row in (vectors[None] if vectors.ndim == 1 else vectors)]
            continue
        if clean and not reference:
            chunk = clean_caption(chunk)
        ids = encode(EMBEDDING_PREFIX + chunk if reference else chunk)  # no embeddings folder: plain words
        if ids:
            word = tokens[-1][2] + 1 if tokens else 1
            tokens += [(token, weight, word) for token in ids]
    dropped = max(0, len(tokens) - (max_length - 1))
    kept = tokens[: max_length - 1] + [(eos_id, 1.0, 0)]
    if dropped:
        warn_truncated(text, dropped, max_length)
    return CaptionTokens(kept + [(pad_id, 1.0, 0)] * (max_length - len(kept)), len(kept), dropped)


def _tail(text: str, words: int = 8) -> str:
    parts = text.split()
    return ("... " if len(parts) > words else "") + " ".join(parts[-words:])


CAPTION_TOKENS_OPTION = "pixart_caption_tokens"  # tokenizer option (ComfyUI tokenizer_options) overriding the budget
CLEAN_CAPTION_OPTION = "pixart_clean_caption"  # tokenizer option: True cleans this prompt whatever the tokenizer's own
MAX_CAPTION_TOKENS = 300  # diffusers' PixArt pipelines take max_sequence_length up to 300
EOS_ID, PAD_ID = 1, 0  # T5's end-of-sequence and padding ids


class CaptionTokenizer:
    """ComfyUI's text-tokenizer protocol (tokenize_with_weights, untokenize, state_dict) over PixArt's caption rules:
    what the PixArt T5 CLIP and the browser's token counter tokenize with. It carries no ComfyUI code: `encode`
    comes from a Hugging Face T5 tokenizer, `embedding` looks textual-inversion embeddings up by name."""

    def __init__(self, encode: Callable[[str], list[int]], caption_tokens: int = 300,
                 embedding: Callable[[str], torch.Tensor | None] | None = None,
                 vocabulary: dict[int, str] | None = None, decode: Callable[[list[int]], str] | None = None,
                 clean: bool = False):
        self.encode = encode
        self.caption_tokens = caption_tokens
        self.clean = clean  # diffusers' caption cleaner for every prompt
        self.embedding = embedding
        self.vocabulary = vocabulary or {}
        self.decoder = decode

    @classmethod
    def from_hf_tokenizer(cls, tokenizer, caption_tokens: int = 300,
                          embedding: Callable[[str], torch.Tensor | None] | None = None,
                          clean: bool = False) -> CaptionTokenizer:
        """From a transformers T5 tokenizer (its ids without the special tokens it would add)."""
        return cls(lambda text: tokenizer(text, add_special_tokens=False)["input_ids"], caption_tokens, embedding,
                   {index: piece for piece, index in tokenizer.get_vocab().items()},
                   lambda ids, skip_special_tokens=True: tokenizer.decode(ids, skip_special_tokens=skip_special_tokens),
                   clean)

    def budget(self, tokenizer_options: dict | None = None) -> int:
        return int((tokenizer_options or {}).get(CAPTION_TOKENS_OPTION, self.caption_tokens))

    def cleans(self, tokenizer_options: dict | None = None) -> bool:
        return bool(self.clean or (tokenizer_options or {}).get(CLEAN_CAPTION_OPTION, False))

    def caption(self, text: str, tokenizer_options: dict | None = None) -> CaptionTokens:
        return tokenize_caption(text, self.encode, EOS_ID, PAD_ID, self.budget(tokenizer_options), self.embedding,
                                self.cleans(tokenizer_options))

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, tokenizer_options: dict | None = None,
                              **kwargs) -> list[list[tuple]]:
        """One batch of (token, weight[, word id]) entries, exactly the budget long, as ComfyUI's CLIP encodes it."""
        tokens = self.caption(text, tokenizer_options).tokens
        return [tokens if return_word_ids else [(token, weight) for token, weight, _ in tokens]]

    def untokenize(self, token_weight_pair: list[tuple]) -> list[tuple]:
        return [(pair, self.vocabulary.get(pair[0], "")) for pair in token_weight_pair]

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        if self.decoder is None:
            raise ValueError("this caption tokenizer has no decoder")
        return self.decoder(token_ids, skip_special_tokens=skip_special_tokens)

    def state_dict(self) -> dict:
        return {}
