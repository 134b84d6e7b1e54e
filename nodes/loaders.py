"""Loader nodes: T5 text encoder -> CLIP, PixArt DiT -> MODEL, and a whole diffusers repo -> MODEL, CLIP, VAE."""
from __future__ import annotations

import os

import comfy.sd
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..pixart.caption import MAX_CAPTION_TOKENS
from ..pixart.checkpoint.files import read_checkpoint
from ..pixart.config import CAPTION_TOKENS
from . import host, model_files
from .model_loading import WEIGHT_DTYPES, load_dit_patcher
from .t5_encoder import T5_DTYPES, load_t5_clip

CAPTION_LENGTHS = {f"{family}_{tokens}": tokens for family, tokens in CAPTION_TOKENS.items()}  # sigma_300, alpha_120
CUSTOM_LENGTH = "custom"

_CAPTION_TOOLTIP = ("Token budget of the prompt: 300 for PixArt-Σ, 120 for PixArt-α (as their pipelines), or custom: "
                    "custom_length tokens (diffusers' max_sequence_length). Longer prompts are cut with a warning.")


def caption_budget(caption_length: str, custom_length: int) -> int:
    """The T5 loader's token budget: a named default, or custom_length (1 to 300) for 'custom'."""
    if caption_length == CUSTOM_LENGTH:
        return int(custom_length)
    if caption_length not in CAPTION_LENGTHS:
        raise ValueError(f"caption_length '{caption_length}' is unknown; choose one of: "
                         f"{', '.join([*CAPTION_LENGTHS, CUSTOM_LENGTH])}.")
    return CAPTION_LENGTHS[caption_length]


class PixArtT5Loader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return host.schema(
            node_id="PixArtT5Loader",
            search_aliases=["T5", "t5xxl", "text encoder", "CLIP loader", "pixart"],
            display_name="PixArt T5 Loader",
            category="PixArt/loaders",
            description="Loads a T5-v1.1 encoder (single file, GGUF quant or diffusers text_encoder folder) as a CLIP "
                        "with PixArt's caption rules: lower case, EOS, padding with an attention mask.",
            inputs=[
                io.Combo.Input("t5_name", options=model_files.choices("text_encoders", "text_encoder", gguf=True),
                               tooltip="T5 weights from models/text_encoders (.safetensors, or a .gguf T5 encoder quant "
                                       "such as t5-v1_1-xxl-encoder-Q8_0.gguf, which stays quantized in memory; needs "
                                       "the gguf package), or a diffusers repo in models/diffusers (its text_encoder "
                                       "folder)."),
                io.Combo.Input("dtype", options=list(T5_DTYPES), default="default",
                               tooltip="Storage dtype of the T5 weights. 'default' keeps a half-precision file's dtype and "
                                       "gives fp32 files ComfyUI's text-encoder dtype (fp16 on most GPUs). T5 computes "
                                       "in float32 activations either way, so fp16 cannot overflow."),
                io.Combo.Input("device", options=["default", "cpu"], default="default",
                               tooltip="'cpu' keeps T5 (about 9 GB in fp16) off the GPU, leaving VRAM to the DiT."),
                io.Combo.Input("caption_length", options=[*CAPTION_LENGTHS, CUSTOM_LENGTH], default="sigma_300",
                               tooltip=_CAPTION_TOOLTIP),
                io.Int.Input("custom_length", default=77, min=1, max=MAX_CAPTION_TOKENS, optional=True,
                             tooltip="The token budget when caption_length is custom (1 to 300; EOS included)."),
                io.Boolean.Input("clean_caption", default=False, optional=True,
                                 tooltip="Clean every prompt as diffusers' PixArt pipelines do by default (URLs, HTML, "
                                         "@handles, hashtags, long numbers, CJK, odd quotes and punctuation removed), "
                                         "after ComfyUI's (word:1.2) syntax is read. Needs ftfy and beautifulsoup4."),
            ],
            outputs=[io.Clip.Output(tooltip="T5 as a CLIP for PixArt Text Encode or CLIPTextEncode "
                                            "(prompt with attention mask).")],
        )

    @classmethod
    def execute(cls, t5_name, dtype, device, caption_length, custom_length=77, clean_caption=False):
        budget = caption_budget(caption_length, custom_length)
        path = model_files.resolve("text_encoders", "text_encoder", t5_name, gguf=True)
        clip = load_t5_clip(path, dtype=dtype, device=device, caption_tokens=budget,
                            embedding_directory=folder_paths.get_folder_paths("embeddings"), clean=clean_caption)
        return io.NodeOutput(clip)


class PixArtDiTLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return host.schema(
            node_id="PixArtDiTLoader",
            search_aliases=["DiT", "diffusion model", "UNet loader", "checkpoint loader", "pixart sigma", "pixart alpha"],
            display_name="PixArt DiT Loader",
            category="PixArt/loaders",
            description="Loads a PixArt-Σ or PixArt-α transformer in any published layout; the variant, trained size "
                        "and positional-embedding scale are read from the weights.",
            inputs=[
                io.Combo.Input("dit_name", options=model_files.choices("diffusion_models", "transformer"),
                               tooltip="Original .pth/.safetensors or diffusers single files from "
                                       "models/diffusion_models, or a diffusers repo in models/diffusers."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="'default' lets ComfyUI choose for your GPU; fp8 halves VRAM (weights are cast "
                                       "per layer); '_fast' uses fp8 matrix multiplication where the GPU has it."),
            ],
            outputs=[io.Model.Output(tooltip="The PixArt DiT for PixArt Sampler, KSampler or any sampler node.")],
        )

    @classmethod
    def execute(cls, dit_name, weight_dtype):
        path = model_files.resolve("diffusion_models", "transformer", dit_name)
        return io.NodeOutput(load_dit_patcher(path, weight_dtype))


class PixArtDiffusersLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return host.schema(
            node_id="PixArtDiffusersLoader",
            search_aliases=["diffusers", "DiT", "T5", "VAE", "checkpoint loader", "pixart"],
            display_name="PixArt Diffusers Repo Loader",
            category="PixArt/loaders",
            description="Loads transformer, text_encoder (+ tokenizer) and vae of a diffusers PixArt repo folder "
                        "placed in models/diffusers.",
            inputs=[
                io.Combo.Input("repo_name", options=list(model_files.diffusers_repos("transformer")),
                               tooltip="A folder in models/diffusers holding transformer/, text_encoder/ and vae/."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="DiT weight dtype, as in the PixArt DiT Loader."),
                io.Combo.Input("t5_device", options=["default", "cpu"], default="default",
                               tooltip="'cpu' keeps T5 off the GPU."),
            ],
            outputs=[io.Model.Output(tooltip="The repo's transformer."),
                     io.Clip.Output(tooltip="The repo's T5 text encoder."),
                     io.Vae.Output(tooltip="The repo's VAE.")],
        )

    @classmethod
    def execute(cls, repo_name, weight_dtype, t5_device):
        transformer = model_files.diffusers_repos("transformer").get(repo_name)
        if transformer is None:
            raise FileNotFoundError(f"'{repo_name}' is not a diffusers repo folder in models/diffusers.")
        repo = os.path.dirname(transformer)
        model = load_dit_patcher(transformer, weight_dtype)
        caption = model.model.diffusion_model.config.caption_tokens  # read from the checkpoint
        clip = load_t5_clip(os.path.join(repo, "text_encoder"), device=t5_device, caption_tokens=caption,
                            embedding_directory=folder_paths.get_folder_paths("embeddings"))
        return io.NodeOutput(model, clip, load_vae_folder(os.path.join(repo, "vae")))


def load_vae_folder(folder: str) -> comfy.sd.VAE:
    """A diffusers vae folder -> ComfyUI's VAE, with the reload factory ComfyUI's multi-GPU nodes need."""
    vae = comfy.sd.VAE(sd=read_checkpoint(folder, component="vae").state_dict)
    vae.throw_exception_if_invalid()
    vae.patcher.cached_patcher_init = (load_vae_folder_patcher, (folder,))
    return vae


def load_vae_folder_patcher(folder: str, disable_dynamic: bool = False):
    return load_vae_folder(folder).patcher
