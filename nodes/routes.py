"""HTTP route for the browser extension: live token count of a prompt, exactly as PixArt Text Encode counts it.

POST /pixart/token_count  {"text": str, "caption_length": 300 | 120, "t5_name": optional listed T5 name}
-> {"count": real tokens incl. EOS, "limit": caption_length, "dropped": tokens beyond the limit}
Bodies are size-limited and validated; anything else is a 4xx with a message, never a server error.
"""
from __future__ import annotations

import functools
import json
import logging

from aiohttp import web

from . import model_files
from .t5_encoder import BUNDLED_TOKENIZER, PixArtT5Tokenizer, find_tokenizer

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_TEXT_CHARS = 20000
CAPTION_LENGTHS = (300, 120)


@functools.lru_cache(maxsize=8)
def _tokenizer(tokenizer_path: str) -> PixArtT5Tokenizer:
    return PixArtT5Tokenizer(tokenizer_path=tokenizer_path)


def _bad(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def token_count(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return _bad(f"body larger than {MAX_BODY_BYTES} bytes", 413)
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        return _bad(f"body larger than {MAX_BODY_BYTES} bytes", 413)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _bad("body must be JSON: {\"text\": \"...\", \"caption_length\": 300}")
    if not isinstance(body, dict):
        return _bad("body must be a JSON object")
    text = body.get("text")
    if not isinstance(text, str):
        return _bad("'text' must be a string")
    if len(text) > MAX_TEXT_CHARS:
        return _bad(f"'text' longer than {MAX_TEXT_CHARS} characters", 413)
    limit = body.get("caption_length", 300)
    if limit not in CAPTION_LENGTHS or isinstance(limit, bool):
        return _bad("'caption_length' must be 300 (PixArt-Σ) or 120 (PixArt-α)")
    tokenizer_path = BUNDLED_TOKENIZER
    t5_name = body.get("t5_name")
    if t5_name is not None:
        if not isinstance(t5_name, str):
            return _bad("'t5_name' must be a string")
        try:
            tokenizer_path = find_tokenizer(model_files.resolve("text_encoders", "text_encoder", t5_name))
        except FileNotFoundError as err:
            return _bad(str(err), 404)
    tokenizer = _tokenizer(tokenizer_path)
    tokenizer.tokenize_with_weights(text, tokenizer_options={"pixart_caption_tokens": limit})
    count, dropped = tokenizer.last_count
    return web.json_response({"count": count, "limit": limit, "dropped": dropped})


_registered = False


def register(server) -> None:
    global _registered
    if not _registered:
        server.routes.post("/pixart/token_count")(token_count)
        _registered = True
