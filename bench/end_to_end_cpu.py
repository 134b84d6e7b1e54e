"""CPU benchmark, end to end: an API-mode graph on a real ComfyUI server vs diffusers' PixArtSigmaPipeline, on the
same random weights, text to decoded image, runs interleaved. Needs a ComfyUI checkout:

    COMFYUI_PATH=/path/to/ComfyUI python bench/end_to_end_cpu.py [--size 512] [--steps 10] [--repeats 3]

Models: the DiT at PixArt's real width (hidden 1152, 16 heads, caption 4096; `--depth` blocks, default 2), a
1-layer T5 encoder with T5-XXL's width (d_model 4096) and vocabulary, the SDXL-layout VAE at full width (all from
bench/fixtures/models.py). Graph (bench/fixtures/graphs.py text_to_image): PixArt T5 Loader -> CLIPTextEncode
(prompt, negative prompt) -> PixArt DiT Loader -> EmptyLatentImage -> KSampler (dpmpp_2m, CFG 4.5) -> VAELoader ->
VAEDecode -> SaveImage. Pipeline: PixArtSigmaPipeline with the same T5, tokenizer (ComfyUI's bundled T5 tokenizer),
transformer and VAE, PixArt-Σ's DPMSolverMultistepScheduler (bench/fixtures/schedulers.py), CFG 4.5, no
resolution binning. Each run gets a new prompt, negative prompt and seed, so ComfyUI re-encodes both and
re-samples as diffusers does (models stay loaded in both, as they do in a user's session). ComfyUI's time is the
server's own execution_start -> execution_success, PNG saving included; the pipeline's is wall time of the call
including the PIL conversion. With 2 DiT blocks, T5 and the full-width VAE decode take much of either time.
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import platform
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.fixtures.comfy_server import ComfyServer  # noqa: E402
from bench.fixtures.graphs import text_to_image  # noqa: E402
from bench.fixtures.models import diffusers_transformer, original_layout, randomize, t5_state_dict, tiny_t5, tiny_vae  # noqa: E402
from bench.fixtures.pack import comfyui_or_exit  # noqa: E402
from bench.fixtures.pipelines import sigma_pipeline  # noqa: E402
from bench.fixtures.timing import Clocked, interleaved  # noqa: E402

log = logging.getLogger("bench.end_to_end_cpu")
GRAPH, PIPELINE = "ComfyUI graph", "diffusers pipeline"


def build_models(depth: int):
    """The diffusers transformer at PixArt-Σ's width, a 1-layer T5 at T5-XXL's width, the SDXL-layout VAE."""
    transformer = diffusers_transformer(depth)
    randomize(transformer, torch.Generator().manual_seed(0))
    t5 = tiny_t5(d_model=4096, d_kv=64, d_ff=1024, num_layers=1, num_heads=8)
    return transformer, t5, tiny_vae()


def save_for_comfy(models_dir: str, transformer, t5, vae):
    """Write the three models where ComfyUI's folder lists find them (DiT in the original PixArt layout)."""
    from safetensors.torch import save_file

    for folder in ("diffusion_models", "text_encoders", "vae"):
        os.makedirs(os.path.join(models_dir, folder), exist_ok=True)
    null_caption = torch.randn(300, 4096, generator=torch.Generator().manual_seed(1)) * 0.02  # (L, C)
    save_file(original_layout(transformer, null_caption), os.path.join(models_dir, "diffusion_models", "dit.safetensors"))
    save_file(t5_state_dict(t5), os.path.join(models_dir, "text_encoders", "t5.safetensors"))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, os.path.join(models_dir, "vae", "vae.safetensors"))


def server_seconds(entry: dict) -> float:
    """execution_start -> execution_success, from the history entry's own timestamps (ms)."""
    stamps = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
    if "execution_success" not in stamps:
        raise RuntimeError(f"the graph failed: {entry['status']}")
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def take(run: int) -> tuple[str, str]:
    """Run `run`'s prompt and negative prompt: new ones each run, so neither side can reuse an encoding."""
    return f"a photo of a cat riding the moon, take {run}", f"blurry, take {run}"


def main():
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    comfyui = comfyui_or_exit()
    from transformers import T5TokenizerFast

    torch.set_num_threads(os.cpu_count())
    transformer, t5, vae = build_models(args.depth)
    tokenizer = T5TokenizerFast.from_pretrained(os.path.join(comfyui, "comfy", "text_encoders", "t5_tokenizer"))
    pipeline = sigma_pipeline(transformer, vae, text_encoder=t5, tokenizer=tokenizer)
    log.info("machine: %s, %d threads, torch %s; %d px, %d steps, CFG, DiT %d blocks at hidden 1152",
             platform.machine(), torch.get_num_threads(), torch.__version__, args.size, args.steps, args.depth)
    with tempfile.TemporaryDirectory() as base:
        save_for_comfy(os.path.join(base, "models"), transformer, t5, vae)
        server = ComfyServer(comfyui, base)
        graph_runs, pipeline_runs = itertools.count(), itertools.count()

        def graph():
            run = next(graph_runs)
            prompt, negative = take(run)
            entry = server.run(text_to_image("dit.safetensors", "t5.safetensors", seed=run, prefix="bench",
                                             prompt=prompt, negative=negative, width=args.size, height=args.size,
                                             steps=args.steps, vae_name="vae.safetensors"), timeout=1800)
            return Clocked(server_seconds(entry), entry)

        def diffusers():
            run = next(pipeline_runs)
            prompt, negative = take(run)
            with torch.inference_mode():
                return pipeline(prompt, negative_prompt=negative, num_inference_steps=args.steps, guidance_scale=4.5,
                                height=args.size, width=args.size, use_resolution_binning=False,
                                max_sequence_length=300, clean_caption=False,
                                generator=torch.Generator().manual_seed(run))

        try:  # the warm-up round loads the models in ComfyUI; both sides then keep them, as in a user's session
            timings = interleaved({GRAPH: graph, PIPELINE: diffusers}, args.repeats)
        finally:
            server.stop()
    for name in (GRAPH, PIPELINE):
        log.info("%s: %s s", name, ", ".join(f"{v:.2f}" for v in timings.samples[name]))
    ours, reference = timings.median(GRAPH), timings.median(PIPELINE)
    log.info("median: ComfyUI graph %.2f s, diffusers pipeline %.2f s, ratio %.3f", ours, reference, ours / reference)


if __name__ == "__main__":
    main()
