"""PixArtTextEncode: prompt -> CONDITIONING (with attention mask), showing the token count on the node."""
from __future__ import annotations

from comfy_api.latest import io, ui

from ..pixart.caption import EOS_ID, CaptionTokenizer
from . import host


def _count(tokens: dict) -> int:
    """Real tokens (through the first EOS) of the first prompt chunk of any CLIP's tokens."""
    for batch in tokens.values():
        ids = [t[0] for t in batch[0]] if batch else []
        return ids.index(EOS_ID) + 1 if EOS_ID in ids else len(ids)
    return 0


def encode(clip, text: str):
    """(conditioning, summary): through the PixArt caption tokenizer when the CLIP has one (the count and the tokens
    cut off come from the same tokenization), else through the CLIP's own tokenizer."""
    tokenizer = getattr(clip.tokenizer, "t5xxl", None)
    if isinstance(tokenizer, CaptionTokenizer):
        caption = tokenizer.caption(text, clip.tokenizer_options)
        tokens = {"t5xxl": [[(token, weight) for token, weight, _ in caption.tokens]]}
        summary = f"{caption.length}/{len(caption.tokens)} tokens"
        if caption.dropped:
            summary += f" (truncated: {caption.dropped} tokens cut off)"
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
            ],
            outputs=[io.Conditioning.Output(tooltip="The T5 embedding of the prompt with its attention mask.")],
        )

    @classmethod
    def execute(cls, clip, text):
        conditioning, summary = encode(clip, text)
        return io.NodeOutput(conditioning, ui=ui.PreviewText(summary))
