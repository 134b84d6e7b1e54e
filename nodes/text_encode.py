"""PixArtTextEncode: prompt -> CONDITIONING (with attention mask), showing the token count on the node."""
from __future__ import annotations

from comfy_api.latest import io, ui

from ..pixart.caption import CLEAN_CAPTION_OPTION, EOS_ID, CaptionTokenizer
from . import host


def _count(tokens: dict) -> int:
    """Real tokens (through the first EOS) of the first prompt chunk of any CLIP's tokens."""
    for batch in tokens.values():
        ids = [t[0] for t in batch[0]] if batch else []
        return ids.index(EOS_ID) + 1 if EOS_ID in ids else len(ids)
    return 0


def encode(clip, text: str, clean_caption: bool = False):
    """(conditioning, summary): through the PixArt caption tokenizer when the CLIP has one (the count and the tokens
    cut off come from the same tokenization), else through the CLIP's own tokenizer. clean_caption: diffusers' caption
    cleaner on this prompt (the PixArt T5 Loader's CLIP may clean every prompt already)."""
    tokenizer = getattr(clip.tokenizer, "t5xxl", None)
    if isinstance(tokenizer, CaptionTokenizer):
        options = {**(clip.tokenizer_options or {}), **({CLEAN_CAPTION_OPTION: True} if clean_caption else {})}
        caption = tokenizer.caption(text, options)
        tokens = {"t5xxl": [[(token, weight) for token, weight, _ in caption.tokens]]}
        summary = f"{caption.length}/{len(caption.tokens)} tokens"
        if caption.dropped:
            summary += f" (truncated: {caption.dropped} tokens cut off)"
    elif clean_caption:
        raise ValueError("clean_caption needs a CLIP from the PixArt T5 Loader (this CLIP tokenizes with its own rules); "
                         "load the T5 with PixArt T5 Loader, or turn clean_caption off.")
    else:
        tokens = clip.tokenize(text)
        summary = f"{_count(tokens)} tokens"
    return clip.encode_from_tokens_scheduled(tokens), summary


class PixArtTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return host.schema(
            node_id="PixArtTextEncode",
            search_aliases=["T5", "prompt", "CLIPTextEncode", "text encode", "conditioning", "pixart"],
            display_name="PixArt Text Encode",
            category="PixArt/conditioning",
            description="Encodes a prompt with the PixArt T5 CLIP; the conditioning carries the attention mask. "
                        "Shows how many of the token budget the prompt uses.",
            inputs=[
                io.Clip.Input("clip", tooltip="From PixArt T5 Loader (or any T5 CLIP)."),
                io.String.Input("text", multiline=True, dynamic_prompts=True,
                                tooltip="The prompt. Supports (word:1.2) weights and embedding:name."),
                io.Boolean.Input("clean_caption", default=False, optional=True,
                                 tooltip="Clean this prompt as diffusers' PixArt pipelines do by default (URLs, HTML, "
                                         "@handles, hashtags, long numbers, CJK, odd quotes and punctuation removed), "
                                         "after the (word:1.2) syntax is read. Off: as the T5 loader's clean_caption "
                                         "says. Needs ftfy and beautifulsoup4."),
            ],
            outputs=[io.Conditioning.Output(tooltip="The T5 embedding of the prompt with its attention mask.")],
        )

    @classmethod
    def execute(cls, clip, text, clean_caption=False):
        conditioning, summary = encode(clip, text, clean_caption)
        return io.NodeOutput(conditioning, ui=ui.PreviewText(summary))
