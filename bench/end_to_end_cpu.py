"""CPU benchmark, end to end: an API-mode graph on a real ComfyUI server vs diffusers' PixArtSigmaPipeline, on the
same random weights, text to decoded image, runs interleaved. Needs a ComfyUI checkout:

    COMFYUI_PATH=/path/to/ComfyUI python bench/end_to_end_cpu.py [--size 512] [--steps 10] [--repeats 3]

Models: the DiT at PixArt's real width (hidden 1152, 16 heads, caption 4096; `--depth` blocks, default 2), a
1-layer T5 encoder with T5-XXL's width (d_model 4096) and vocabulary, the SDXL-layout VAE at full width. Graph:
PixArt T5 Loader -> CLIPTextEncode (prompt, empty negative) -> PixArt DiT Loader -> EmptyLatentImage -> KSampler
(dpmpp_2m, CFG 4.5) -> VAELoader -> VAEDecode -> SaveImage. Pipeline: PixArtSigmaPipeline with the same T5,
tokenizer (ComfyUI's bundled T5 tokenizer), transformer and VAE, DPMSolverMultistepScheduler, CFG 4.5, no
resolution binning. Each run gets a new prompt, negative prompt and seed, so ComfyUI re-encodes both and
re-samples as diffusers does (models stay loaded in both, as they do in a user's session). ComfyUI's time is the
server's own execution_start -> execution_success, PNG saving included; the pipeline's is wall time of the call
including the PIL conversion. With 2 DiT blocks, T5 and the full-width VAE decode take much of either time.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
log = logging.getLogger("bench.end_to_end_cpu")


def build_models(depth: int):
    """The diffusers transformer, T5 encoder and VAE, random weights (std 0.02 for the DiT and T5)."""
    from transformers import T5Config, T5EncoderModel

    from bench.common import diffusers_transformer
    from host.comfy_host import tiny_vae

    torch.manual_seed(0)
    transformer = diffusers_transformer(depth)
    t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=1024, num_layers=1, num_heads=8,
                                 feed_forward_proj="gated-gelu", tie_word_embeddings=False)).eval()
    with torch.no_grad():
        for param in [*transformer.parameters(), *t5.parameters()]:
            param.normal_(std=0.02)
    return transformer, t5, tiny_vae()


def save_for_comfy(models_dir: str, transformer, t5, vae):
    """Write the three models where ComfyUI's folder lists find them (DiT in the original PixArt layout)."""
    from safetensors.torch import save_file

    from host.comfy_host import t5_state_dict
    from tiny_models import original_layout

    for folder in ("diffusion_models", "text_encoders", "vae"):
        os.makedirs(os.path.join(models_dir, folder), exist_ok=True)
    null_caption = torch.randn(300, 4096) * 0.02
    save_file(original_layout(transformer, null_caption), os.path.join(models_dir, "diffusion_models", "dit.safetensors"))
    save_file(t5_state_dict(t5), os.path.join(models_dir, "text_encoders", "t5.safetensors"))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, os.path.join(models_dir, "vae", "vae.safetensors"))


def graph(prompt: str, negative: str, seed: int, size: int, steps: int) -> dict:
    return {
        "t5": {"class_type": "PixArtT5Loader", "inputs": {"t5_name": "t5.safetensors", "dtype": "default",
                                                          "device": "default", "caption_length": "sigma_300"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["t5", 0], "text": prompt}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["t5", 0], "text": negative}},
        "dit": {"class_type": "PixArtDiTLoader", "inputs": {"dit_name": "dit.safetensors", "weight_dtype": "default"}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "sample": {"class_type": "KSampler",
                   "inputs": {"model": ["dit", 0], "positive": ["pos", 0], "negative": ["neg", 0],
                              "latent_image": ["latent", 0], "seed": seed, "steps": steps, "cfg": 4.5,
                              "sampler_name": "dpmpp_2m", "scheduler": "normal", "denoise": 1.0}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "vae.safetensors"}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": "bench"}},
    }


def server_seconds(entry: dict) -> float:
    """execution_start -> execution_success, from the history entry's own timestamps (ms)."""
    stamps = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
    if "execution_success" not in stamps:
        raise RuntimeError(f"the graph failed: {entry['status']}")
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def build_pipeline(transformer, t5, vae, tokenizer_dir: str):
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline
    from transformers import T5TokenizerFast

    pipeline = PixArtSigmaPipeline(tokenizer=T5TokenizerFast.from_pretrained(tokenizer_dir), text_encoder=t5, vae=vae,
                                   transformer=transformer, scheduler=DPMSolverMultistepScheduler())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def main():
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from bench.common import comfyui_or_exit
    from host.comfy_server import ComfyServer

    comfyui = comfyui_or_exit()

    torch.set_num_threads(os.cpu_count())
    transformer, t5, vae = build_models(args.depth)
    tokenizer_dir = os.path.join(comfyui, "comfy", "text_encoders", "t5_tokenizer")
    pipeline = build_pipeline(transformer, t5, vae, tokenizer_dir)
    log.info("machine: %s, %d threads, torch %s; %d px, %d steps, CFG, DiT %d blocks at hidden 1152",
             platform.machine(), torch.get_num_threads(), torch.__version__, args.size, args.steps, args.depth)
    with tempfile.TemporaryDirectory() as base:
        save_for_comfy(os.path.join(base, "models"), transformer, t5, vae)
        server = ComfyServer(comfyui, base)
        try:
            times = {"ComfyUI graph": [], "diffusers pipeline": []}
            for run in range(args.repeats + 1):  # run 0 loads the models in ComfyUI: a warm-up for both
                prompt, negative = f"a photo of a cat riding the moon, take {run}", f"blurry, take {run}"
                comfy_s = server_seconds(server.run(graph(prompt, negative, run, args.size, args.steps), timeout=1800))
                start = time.perf_counter()
                with torch.inference_mode():
                    pipeline(prompt, negative_prompt=negative, num_inference_steps=args.steps, guidance_scale=4.5,
                             height=args.size, width=args.size, use_resolution_binning=False,
                             max_sequence_length=300, clean_caption=False, generator=torch.Generator().manual_seed(run))
                pipe_s = time.perf_counter() - start
                log.info("run %d: ComfyUI graph %.2f s, diffusers pipeline %.2f s%s", run, comfy_s, pipe_s,
                         " (warm-up, not counted)" if run == 0 else "")
                if run:
                    times["ComfyUI graph"].append(comfy_s)
                    times["diffusers pipeline"].append(pipe_s)
        finally:
            server.stop()
    ours, reference = (statistics.median(times[name]) for name in ("ComfyUI graph", "diffusers pipeline"))
    log.info("median: ComfyUI graph %.2f s, diffusers pipeline %.2f s, ratio %.3f", ours, reference, ours / reference)


if __name__ == "__main__":
    main()
