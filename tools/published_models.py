"""The published model files the example workflows and the node help name: one table, read by tools/api_to_ui.py
(each loader node of a UI example declares its files in `properties.models`, which ComfyUI's frontend reads to offer
downloads of missing files), by tools/node_docs.py (links in the node help) and by the tests that check every
example's loader values are declared here.

Sources (file names as published on Hugging Face):
- PixArt-Σ original checkpoints: PixArt-alpha/PixArt-Sigma (the PixArt-sigma repo's tools/download.py fetches them
  from there; diffusers' PixArtTransformer2DModel.from_single_file docs use PixArt-Sigma-XL-2-1024-MS.pth).
- PixArt-α original checkpoints: PixArt-alpha/PixArt-alpha; its HED ControlNet (PixArt-δ): PixArt-alpha/PixArt-ControlNet.
- T5-v1.1-XXL encoder as one file: comfyanonymous/flux_text_encoders (t5xxl_fp16.safetensors, 9.79 GB).
- VAEs: stabilityai/sdxl-vae for PixArt-Σ (SDXL latents), stabilityai/sd-vae-ft-mse-original for PixArt-α.
No hash is declared: the publishers give none beside the files that this table could cite.
"""
from __future__ import annotations

from dataclasses import dataclass

# What ComfyUI's frontend (1.58) counts as a model file in a loader's combo (missingModelScan.ts); a value without
# one of these endings (a diffusers folder) is never offered for download.
MODEL_FILE_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft", ".onnx", ".gguf")
DIFFUSERS_PREFIX = "diffusers/"


@dataclass(frozen=True)
class ModelFile:
    name: str        # the file name the loader widget shows
    repo: str        # Hugging Face repository
    directory: str   # ComfyUI model folder (models/<directory>/)
    path: str = ""   # path inside the repository when it differs from name

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}/resolve/main/{self.path or self.name}"

    @property
    def page(self) -> str:
        return f"https://huggingface.co/{self.repo}/blob/main/{self.path or self.name}"

    def declaration(self) -> dict:
        """The entry ComfyUI's frontend reads from a node's properties.models (name, url, directory)."""
        return {"name": self.name, "url": self.url, "directory": self.directory}


@dataclass(frozen=True)
class DiffusersRepo:
    name: str        # the loader value: diffusers/<folder>
    repo: str        # Hugging Face repository to copy whole into models/diffusers/<folder>

    @property
    def page(self) -> str:
        return f"https://huggingface.co/{self.repo}"


FILES = {f.name: f for f in (
    ModelFile("PixArt-Sigma-XL-2-1024-MS.pth", "PixArt-alpha/PixArt-Sigma", "diffusion_models"),
    ModelFile("PixArt-Sigma-XL-2-2K-MS.pth", "PixArt-alpha/PixArt-Sigma", "diffusion_models"),
    ModelFile("PixArt-XL-2-1024-MS.pth", "PixArt-alpha/PixArt-alpha", "diffusion_models"),
    ModelFile("PixArt-XL-2-512x512.pth", "PixArt-alpha/PixArt-alpha", "diffusion_models"),
    ModelFile("PixArt-XL-2-1024-ControlNet.pth", "PixArt-alpha/PixArt-ControlNet", "controlnet"),
    ModelFile("t5xxl_fp16.safetensors", "comfyanonymous/flux_text_encoders", "text_encoders"),
    ModelFile("sdxl_vae.safetensors", "stabilityai/sdxl-vae", "vae"),
    ModelFile("vae-ft-mse-840000-ema-pruned.safetensors", "stabilityai/sd-vae-ft-mse-original", "vae"),
)}

# Checkpoints published only as diffusers folders: the frontend cannot download a folder, so the examples using them
# declare their single files (T5, VAE) and the README / node help link the repository to copy into models/diffusers.
REPOS = {r.name: r for r in (
    DiffusersRepo("diffusers/PixArt-Alpha-DMD-XL-2-512x512", "PixArt-alpha/PixArt-Alpha-DMD-XL-2-512x512"),
    DiffusersRepo("diffusers/PixArt-LCM-XL-2-1024-MS", "PixArt-alpha/PixArt-LCM-XL-2-1024-MS"),
)}


def is_model_file(value) -> bool:
    """A widget value the frontend scans as a model file (same rule as its missing-model scan)."""
    return isinstance(value, str) and value.strip() != "" and value.lower().endswith(MODEL_FILE_EXTENSIONS)


def is_model_value(value) -> bool:
    """A loader value naming a model: a model file or a diffusers folder."""
    return is_model_file(value) or (isinstance(value, str) and value.startswith(DIFFUSERS_PREFIX))


def declarations(values) -> list[dict]:
    """properties.models for a node whose widgets hold `values`: one entry per published file selected, in widget
    order, each once. A model file missing from the table raises: every example must name published files only."""
    entries, seen = [], set()
    for value in values:
        if not is_model_file(value) or value in seen:
            continue
        if value not in FILES:
            raise KeyError(f"{value!r} is not in tools/published_models.py FILES: add its repository and folder")
        seen.add(value)
        entries.append(FILES[value].declaration())
    return entries
