"""HTTP routes for the browser extension; bodies are size-limited and validated, anything else is a 4xx.

POST /pixart/token_count  {"text": str, "caption_length": 1..300, "clean_caption": optional bool,
                           "t5_name": optional listed T5 name}
-> {"count": real tokens incl. EOS, "limit": caption_length, "dropped": tokens beyond the limit}
   (exactly as PixArt Text Encode counts; 409 when cleaning is asked for without its packages)
POST /pixart/resolution  {"width": int, "height": int, "binning": "off" | "256" | "512" | "1024" | "2048" | "model"}
-> {"width", "height": size generated at, "resized": whether the image is resized back to the request}
   ("model" is answered with the 1024 bins and says so: the trained size is known only once a model is loaded)
"""
from __future__ import annotations

import json
import logging

from aiohttp import web

from ..pixart.bins import BINNING_CHOICES, MODEL_BINS, generation_size
from ..pixart.caption import MAX_CAPTION_TOKENS
from ..pixart.caption_clean import CaptionCleaningUnavailable
from . import model_files
from .t5_encoder import BUNDLED_TOKENIZER, caption_tokenizer, find_tokenizer

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_TEXT_CHARS = 20000


def _bad(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _json_body(request: web.Request) -> dict | web.Response:
    """The request's JSON object, or the 4xx response to send instead."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return _bad(f"body larger than {MAX_BODY_BYTES} bytes", 413)
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        return _bad(f"body larger than {MAX_BODY_BYTES} bytes", 413)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _bad("body must be a JSON object")
    return body if isinstance(body, dict) else _bad("body must be a JSON object")


async def token_count(request: web.Request) -> web.Response:
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    text = body.get("text")
    if not isinstance(text, str):
        return _bad("'text' must be a string")
    if len(text) > MAX_TEXT_CHARS:
        return _bad(f"'text' longer than {MAX_TEXT_CHARS} characters", 413)
    limit = body.get("caption_length", 300)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_CAPTION_TOKENS:
        return _bad(f"'caption_length' must be a whole number from 1 to {MAX_CAPTION_TOKENS} (300 PixArt-Σ, 120 "
                    "PixArt-α)")
    clean = body.get("clean_caption", False)
    if not isinstance(clean, bool):
        return _bad("'clean_caption' must be true or false")
    tokenizer_path = BUNDLED_TOKENIZER
    t5_name = body.get("t5_name")
    if t5_name is not None:
        if not isinstance(t5_name, str):
            return _bad("'t5_name' must be a string")
        try:
            tokenizer_path = find_tokenizer(model_files.resolve("text_encoders", "text_encoder", t5_name))
        except FileNotFoundError as err:
            return _bad(str(err), 404)
    try:
        caption = caption_tokenizer(tokenizer_path, limit, clean=clean).caption(text)
    except CaptionCleaningUnavailable as err:
        return _bad(str(err), 409)
    return web.json_response({"count": caption.length, "limit": limit, "dropped": caption.dropped})


async def resolution(request: web.Request) -> web.Response:
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    width, height, binning = body.get("width"), body.get("height"), body.get("binning", "model")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 16 <= v <= 16384 for v in (width, height)):
        return _bad("'width' and 'height' must be whole numbers from 16 to 16384")
    if binning not in BINNING_CHOICES:
        return _bad(f"'binning' must be one of {', '.join(BINNING_CHOICES)}")
    gen_h, gen_w = generation_size(height, width, "1024" if binning == MODEL_BINS else binning)
    return web.json_response({"width": gen_w, "height": gen_h, "resized": (gen_w, gen_h) != (width, height),
                              "table": "1024 (model bins: 2048 for 2K models)" if binning == MODEL_BINS else binning})


_registered = False


def register(server) -> None:
    global _registered
    if not _registered:
        server.routes.post("/pixart/token_count")(token_count)
        server.routes.post("/pixart/resolution")(resolution)
        _registered = True
