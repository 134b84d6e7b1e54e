"""T5 text encoder as a ComfyUI CLIP: ComfyUI's own T5 (comfy.text_encoders.t5), configured from the weights,
tokenizing with the engine's caption rules (pixart.caption: lower case, EOS, padded to 300 Σ / 120 α, mask).

The attention mask travels in the conditioning as `attention_mask`; T5 itself masks padded keys, as
transformers' T5EncoderModel does when diffusers' pipeline passes the mask.
"""
from __future__ import annotations

import functools
import logging
import os

import comfy.model_management
import comfy.sd
import comfy.supported_models_base
import comfy.text_encoders.t5
import torch
from comfy import sd1_clip
from transformers import T5TokenizerFast

from ..pixart.caption import EOS_ID, MAX_CAPTION_TOKENS, PAD_ID, CaptionTokenizer
from ..pixart.caption_clean import require_cleaning
from ..pixart.checkpoint.errors import CheckpointError, require_fit
from ..pixart.checkpoint.files import read_checkpoint, stored_dtype
from ..pixart.checkpoint.gguf_file import ARCHITECTURE_FIELD, GGUF_EXT
from ..pixart.checkpoint.quantization import GGUF, is_quantization_key, quantization_layout
from ..pixart.t5 import t5_config_from_weights, to_t5_state_dict
from . import host
from .gguf_ops import GGUFOps

log = logging.getLogger(__name__)

BUNDLED_TOKENIZER = os.path.join(os.path.dirname(os.path.realpath(comfy.text_encoders.t5.__file__)), "t5_tokenizer")


@functools.lru_cache(maxsize=8)
def _hf_tokenizer(tokenizer_path: str) -> T5TokenizerFast:
    return T5TokenizerFast.from_pretrained(tokenizer_path)


def caption_tokenizer(tokenizer_path: str = BUNDLED_TOKENIZER, caption_tokens: int = 300, embedding_directory=None,
                      embedding_size: int = 4096, clean: bool = False) -> CaptionTokenizer:
    """The engine's caption tokenizer over the T5 vocabulary in `tokenizer_path`, with textual-inversion embeddings
    from ComfyUI's embeddings folders (read by ComfyUI's own loader) when there are any; `clean`: diffusers' caption
    cleaner on every prompt."""
    embedding = None
    if embedding_directory is not None:
        def embedding(name):
            return sd1_clip.load_embed(name, embedding_directory, embedding_size, "t5xxl")
    return CaptionTokenizer.from_hf_tokenizer(_hf_tokenizer(tokenizer_path), caption_tokens, embedding, clean)


def find_tokenizer(path: str) -> str:
    """A T5 tokenizer stored beside the weights (HF layout), else ComfyUI's bundled one."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    candidates = [os.path.join(folder, "tokenizer"), os.path.join(os.path.dirname(os.path.normpath(folder)), "tokenizer"),
                  folder]
    for candidate in candidates:
        if any(os.path.isfile(os.path.join(candidate, f)) for f in ("tokenizer.json", "spiece.model")):
            return candidate
    return BUNDLED_TOKENIZER


def t5_clip_target(t5_config: dict, tokenizer_path: str, caption_tokens: int, source: str, clean: bool = False):
    class PixArtT5Encoder(sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options=None):
            super().__init__(device=device, layer="last", textmodel_json_config=dict(t5_config), dtype=dtype,
                             special_tokens={"end": EOS_ID, "pad": PAD_ID}, model_class=comfy.text_encoders.t5.T5,
                             enable_attention_masks=True, return_attention_masks=True, model_options=model_options or {})

        def load_sd(self, sd):
            """The host's loading; weights it leaves missing or unused are an error naming the file."""
            missing, unexpected = host.unused_weights(*super().load_sd(sd))
            require_fit(source, "the T5 configuration read from them", missing, unexpected)
            return missing, unexpected

    class PixArtT5Model(sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options=None):
            super().__init__(device=device, dtype=dtype, model_options=model_options or {}, name="t5xxl",
                             clip_model=PixArtT5Encoder)

    class PixArtT5TokenizerSet(sd1_clip.SD1Tokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data=None):
            def tokenizer(embedding_directory=None, tokenizer_data=None):
                return caption_tokenizer(tokenizer_path, caption_tokens, embedding_directory, t5_config["d_model"], clean)

            super().__init__(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data or {}, name="t5xxl",
                             tokenizer=tokenizer)

    return comfy.supported_models_base.ClipTarget(PixArtT5TokenizerSet, PixArtT5Model)


T5_DTYPES = {"default": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
             "fp8_e4m3fn": torch.float8_e4m3fn}


def _default_dtype(state_dict: dict[str, torch.Tensor], load_device: torch.device) -> torch.dtype:
    """Like ComfyUI's own T5 loading: a half-precision file stays so; an fp32 file (e.g. a diffusers text_encoder
    folder, ~19 GB for XXL) gets ComfyUI's text-encoder dtype for the device."""
    stored = state_dict["encoder.final_layer_norm.weight"].dtype
    return stored if stored != torch.float32 else comfy.model_management.text_encoder_dtype(load_device)


def _gguf_options(state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None, source: str):
    """(storage dtype, model options) of a quantized GGUF T5: the pack's GGUF layers; its unquantized tensors (norms,
    relative position bias) keep the file's dtype unless `dtype` names another."""
    if dtype in host.FP8_DTYPES:
        raise CheckpointError(f"{source} is already quantized (GGUF); set dtype to 'default' (or fp16/bf16/fp32 for its "
                              "unquantized tensors) instead of an fp8 choice.")
    storage = dtype or stored_dtype(state_dict)
    host.cast_for_storage(state_dict, storage)  # floating-point tensors only; the quantized bytes are uint8
    return storage, {"dtype": storage, "custom_operations": GGUFOps}


def load_t5_clip(path: str, dtype: str = "default", device: str = "default", caption_tokens: int = 300,
                 embedding_directory=None, disable_dynamic: bool = False, clean: bool = False) -> comfy.sd.CLIP:
    """File or diffusers text_encoder folder -> ComfyUI CLIP with PixArt tokenization.

    Weights are stored in the chosen dtype (every layer holds it, dynamic VRAM included); ComfyUI's casting ops
    run T5 in float32 activations, so fp16 storage cannot overflow. Quantized files (scaled fp8, comfy_quant) are
    read by the host's own ops; a quantized GGUF file stays quantized in memory and is dequantized per layer as it runs
    (nodes.gguf_ops; the dtype applies to its unquantized tensors). device 'cpu' keeps T5 on the CPU (saves VRAM
    for the DiT). caption_tokens: the budget, 1 to 300 (diffusers' max_sequence_length); clean: diffusers' caption
    cleaner on every prompt (ftfy and beautifulsoup4 needed).
    """
    if not 1 <= caption_tokens <= MAX_CAPTION_TOKENS:
        raise ValueError(f"caption tokens {caption_tokens}: PixArt's T5 budget is 1 to {MAX_CAPTION_TOKENS} tokens.")
    if clean:
        require_cleaning()
    if dtype not in T5_DTYPES:
        raise ValueError(f"dtype '{dtype}' is unknown; choose one of: {', '.join(T5_DTYPES)}.")
    loaded = read_checkpoint(path, component="text_encoder")
    source = os.path.basename(os.path.normpath(path))
    gguf_architecture = loaded.metadata.get(ARCHITECTURE_FIELD, "") if path.lower().endswith(GGUF_EXT) else None
    state_dict = to_t5_state_dict(loaded.state_dict, source, gguf_architecture)
    config = t5_config_from_weights(state_dict, source)
    layout = quantization_layout(state_dict, loaded.metadata)
    load_device = torch.device("cpu") if device == "cpu" else comfy.model_management.text_encoder_device()
    if layout == GGUF:
        storage, model_options = _gguf_options(state_dict, T5_DTYPES[dtype], source)
        disable_dynamic = True  # the layers keep their own (quantized) parameters; the classic patcher moves them
    else:
        state_dict, quantization = host.host_quantization(state_dict, loaded.metadata, layout, source)
        host.refuse_fp8_on_quantized(quantization, T5_DTYPES[dtype], "dtype", source)
        storage = T5_DTYPES[dtype] or _default_dtype(state_dict, load_device)
        model_options = {"dtype": storage, **quantization.model_options()}
        if not quantization.quantized:
            host.cast_for_storage(state_dict, storage)
    if device == "cpu":
        model_options["load_device"] = model_options["offload_device"] = load_device
    tokenizer_path = find_tokenizer(loaded.source if os.path.isdir(path) else path)
    weight_bytes = sum(t.nbytes for k, t in state_dict.items() if not is_quantization_key(k))
    parameters = weight_bytes // comfy.model_management.dtype_size(storage)  # what the host sizes the model by
    target = t5_clip_target(config, tokenizer_path, caption_tokens, source, clean)
    clip = host.build_clip(target, state_dict, embedding_directory=embedding_directory, parameters=parameters,
                    model_options=model_options, disable_dynamic=disable_dynamic)
    clip.patcher.cached_patcher_init = (load_t5_patcher, (path, dtype, device, caption_tokens, embedding_directory, clean))
    log.info("PixArt T5 %s: %d layers, d_model %d, %d caption tokens%s, weights %s%s, tokenizer %s", source,
             config["num_layers"], config["d_model"], caption_tokens, ", captions cleaned" if clean else "", storage,
             f" ({layout})" if layout else "", tokenizer_path)
    return clip


def load_t5_patcher(path: str, dtype: str, device: str, caption_tokens: int, embedding_directory, clean: bool = False,
                    disable_dynamic: bool = False):
    """The CLIP patcher's cached_patcher_init factory (multi-GPU deep clones, non-dynamic delegates)."""
    return load_t5_clip(path, dtype, device, caption_tokens, embedding_directory, disable_dynamic=disable_dynamic,
                        clean=clean).patcher
