"""PixArtTextEncode: prompt -> CONDITIONING (with attention mask), showing the token count on the node."""
from __future__ import annotations

from comfy_api.latest import io, ui

from .t5_encoder import EOS_ID


def _count(tokens: dict) -> int:
    """Real tokens (through the first EOS) of the first prompt chunk."""
    for batch in tokens.values():
        ids = [t[0] for t in batch[0]] if batch else []
        return ids.index(EOS_ID) + 1 if EOS_ID in ids else len(ids)
    return 0


class PixArtTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PixArtTextEncode",
            display_name="PixArt Text Encode",
            category="PixArt/conditioning",
            description="Encodes a prompt with the PixArt T5 CLIP; the conditioning carries the attention mask. "
                        "Shows how many of the token budget the prompt uses.",
            inputs=[
                io.Clip.Input("clip", tooltip="From PixArt T5 Loader (or any T5 CLIP)."),
                io.String.Input("text", multiline=True, dynamic_prompts=True,
                                tooltip="The prompt. Supports (word:1.2) weights and embedding:name."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, clip, text):
        tokens = clip.tokenize(text)
        conditioning = clip.encode_from_tokens_scheduled(tokens)
        tokenizer = getattr(clip.tokenizer, "t5xxl", None)
        budget = getattr(tokenizer, "caption_tokens", None)
        dropped = getattr(tokenizer, "last_count", (0, 0))[1]
        count = _count(tokens)
        summary = f"{count}/{budget} tokens" if budget else f"{count} tokens"
        if dropped:
            summary += f" (truncated: {dropped} tokens cut off)"
        return io.NodeOutput(conditioning, ui=ui.PreviewText(summary))
