"""T5 text encoder as a ComfyUI CLIP: ComfyUI's own T5 (comfy.text_encoders.t5), configured from the weights,
with a tokenizer that follows PixArt's caption rules (lower case, EOS, padded to 300 Σ / 120 α, mask).

The attention mask travels in the conditioning as `attention_mask`; T5 itself masks padded keys, as
transformers' T5EncoderModel does when diffusers' pipeline passes the mask.
"""
from __future__ import annotations

import functools
import logging
import os
import re

import comfy.sd
import comfy.supported_models_base
import comfy.text_encoders.t5
import torch
from comfy import sd1_clip
from transformers import T5TokenizerFast

from ..pixart.checkpoint.files import read_checkpoint
from ..pixart.t5 import t5_config_from_weights, to_t5_state_dict
from ..pixart.text import fit_caption, preprocess_caption, warn_truncated

log = logging.getLogger(__name__)

EOS_ID, PAD_ID = 1, 0
CAPTION_TOKENS_OPTION = "pixart_caption_tokens"  # tokenizer_data / tokenizer_options key overriding the budget
BUNDLED_TOKENIZER = os.path.join(os.path.dirname(os.path.realpath(comfy.text_encoders.t5.__file__)), "t5_tokenizer")
_EMBEDDING_WORD = re.compile(r"(embedding:\S+)")


def _lower_keeping_embeddings(text: str) -> str:
    """PixArt's caption preprocessing (lower case, trimmed), leaving `embedding:Name` references as written."""
    parts = _EMBEDDING_WORD.split(preprocess_caption(text) if "embedding:" not in text else text.strip())
    return "".join(p if p.startswith("embedding:") else p.lower() for p in parts)


class PixArtT5Tokenizer(sd1_clip.SDTokenizer):
    """ComfyUI tokenizer (prompt weights, embeddings) + PixArt's budget: truncate with a warning, EOS, pad."""

    def __init__(self, embedding_directory=None, tokenizer_data=None, tokenizer_path=BUNDLED_TOKENIZER,
                 caption_tokens=300, embedding_size=4096):
        tokenizer_data = tokenizer_data or {}
        super().__init__(tokenizer_path, max_length=99999999, pad_with_end=False, embedding_directory=embedding_directory,
                         embedding_size=embedding_size, embedding_key="t5xxl", tokenizer_class=T5TokenizerFast,
                         has_start_token=False, pad_to_max_length=False, min_length=1, tokenizer_data=tokenizer_data)
        self.caption_tokens = int(tokenizer_data.get(CAPTION_TOKENS_OPTION, caption_tokens))
        self.last_count = (0, 0)  # (real tokens incl. EOS, dropped) of the last prompt, for the UI

    def tokenize_with_weights(self, text: str, return_word_ids=False, tokenizer_options=None, **kwargs):
        options = tokenizer_options or {}
        budget = int(options.get(CAPTION_TOKENS_OPTION, self.caption_tokens))
        batches = super().tokenize_with_weights(_lower_keeping_embeddings(text), return_word_ids=True, **kwargs)
        items = [item for batch in batches for item in batch]
        if items and items[-1][0] == EOS_ID:
            items = items[:-1]
        tokens, length, dropped = fit_caption(items, (EOS_ID, 1.0, 0), (PAD_ID, 1.0, 0), budget)
        self.last_count = (length, dropped)
        if dropped:
            warn_truncated(text, dropped, budget)
        if not return_word_ids:
            tokens = [(t, w) for t, w, _ in tokens]
        return [tokens]


def find_tokenizer(path: str) -> str:
    """A T5 tokenizer stored beside the weights (HF layout), else ComfyUI's bundled one."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    candidates = [os.path.join(folder, "tokenizer"), os.path.join(os.path.dirname(os.path.normpath(folder)), "tokenizer"),
                  folder]
    for candidate in candidates:
        if any(os.path.isfile(os.path.join(candidate, f)) for f in ("tokenizer.json", "spiece.model")):
            return candidate
    return BUNDLED_TOKENIZER


def t5_clip_target(t5_config: dict, tokenizer_path: str, caption_tokens: int, scaled_fp8):
    class PixArtT5Encoder(sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options=None):
            model_options = dict(model_options or {})
            if scaled_fp8 is not None:
                model_options.setdefault("scaled_fp8", scaled_fp8)
            super().__init__(device=device, layer="last", textmodel_json_config=dict(t5_config), dtype=dtype,
                             special_tokens={"end": EOS_ID, "pad": PAD_ID}, model_class=comfy.text_encoders.t5.T5,
                             enable_attention_masks=True, return_attention_masks=True, model_options=model_options)

    class PixArtT5Model(sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options=None):
            super().__init__(device=device, dtype=dtype, model_options=model_options or {}, name="t5xxl",
                             clip_model=PixArtT5Encoder)

    class PixArtT5TokenizerSet(sd1_clip.SD1Tokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data=None):
            tokenizer = functools.partial(PixArtT5Tokenizer, tokenizer_path=tokenizer_path, caption_tokens=caption_tokens,
                                          embedding_size=t5_config["d_model"])
            super().__init__(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data or {}, name="t5xxl",
                             tokenizer=tokenizer)

    return comfy.supported_models_base.ClipTarget(PixArtT5TokenizerSet, PixArtT5Model)


T5_DTYPES = {"default": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
             "fp8_e4m3fn": torch.float8_e4m3fn}


def load_t5_clip(path: str, dtype: str = "default", device: str = "default", caption_tokens: int = 300,
                 embedding_directory=None) -> comfy.sd.CLIP:
    """File or diffusers text_encoder folder -> ComfyUI CLIP with PixArt tokenization.

    Weights are stored in the chosen dtype; ComfyUI's casting ops run T5 in float32 activations, so fp16
    storage cannot overflow. device 'cpu' keeps T5 on the CPU (saves VRAM for the DiT).
    """
    loaded = read_checkpoint(path, component="text_encoder")
    source = os.path.basename(os.path.normpath(path))
    state_dict = to_t5_state_dict(loaded.state_dict, source)
    scaled_fp8 = state_dict["scaled_fp8"].dtype if "scaled_fp8" in state_dict else None
    config = t5_config_from_weights(state_dict, source)
    tokenizer_path = find_tokenizer(loaded.source if os.path.isdir(path) else path)
    model_options = {}
    stored = state_dict["encoder.final_layer_norm.weight"].dtype
    if T5_DTYPES[dtype] is not None:
        model_options["dtype"] = T5_DTYPES[dtype]
    elif scaled_fp8 is None and stored != torch.float32:
        model_options["dtype"] = stored  # like ComfyUI's own T5 loading: a half-precision file stays so
    # an fp32 file (e.g. a diffusers text_encoder folder, ~19 GB for XXL) gets ComfyUI's text-encoder dtype
    if device == "cpu":
        model_options["load_device"] = model_options["offload_device"] = torch.device("cpu")
    parameters = sum(t.numel() for t in state_dict.values())
    clip = comfy.sd.CLIP(t5_clip_target(config, tokenizer_path, caption_tokens, scaled_fp8),
                         embedding_directory=embedding_directory, parameters=parameters, model_options=model_options)
    missing, unexpected = clip.load_sd(state_dict)
    missing = [k for k in missing if not k.endswith("scaled_fp8")]
    if missing:
        raise ValueError(f"{source}: T5 weights do not fit the configuration read from them; missing {missing[:6]}.")
    log.info("PixArt T5 %s: %d layers, d_model %d, %d caption tokens, tokenizer %s", source, config["num_layers"],
             config["d_model"], caption_tokens, tokenizer_path)
    return clip
