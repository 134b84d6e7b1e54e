"""CPU benchmark: core's EasyCache node on PixArt-Σ / the plain model, 20 steps of core KSampler's sampling
(nodes.common_ksampler: dpmpp_2m on the pixart_reference schedule, CFG 4.5), same weights and seed, interleaved in
one process. Needs a ComfyUI checkout:

    COMFYUI_PATH=/path/to/ComfyUI python bench/easycache_cpu.py [--size 512] [--depth 4] [--repeats 3]

The DiT at PixArt-Σ's real width (hidden 1152, 16 heads, caption 4096) with `--depth` random-weight blocks, loaded by
the pack's DiT loader; EasyCache at its node's defaults (reuse_threshold 0.2, start 0.15, end 0.95) unless given.
Prints the median seconds of each, their ratio, the steps EasyCache skipped (from its own log line) and the latent
difference. Random weights change how fast the output moves between steps, so the steps skipped on a published
checkpoint differ; the ratio per skipped step is what carries over.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import platform
import re
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.fixtures.models import diffusers_transformer, original_layout, randomize  # noqa: E402
from bench.fixtures.pack import comfyui_or_exit, import_comfy  # noqa: E402
from bench.fixtures.timing import interleaved  # noqa: E402


class SkipCounter(logging.Handler):
    """EasyCache's own summary line: 'EasyCache - skipped N/M steps'."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.skipped: list[tuple[int, int]] = []

    def emit(self, record):
        found = re.search(r"EasyCache - skipped (\d+)/(\d+) steps", record.getMessage())
        if found:
            self.skipped.append((int(found.group(1)), int(found.group(2))))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.2)
    parser.add_argument("--start", type=float, default=0.15)
    parser.add_argument("--end", type=float, default=0.95)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    counter = SkipCounter()
    logging.getLogger().addHandler(counter)
    logging.getLogger().setLevel(logging.INFO)

    import_comfy(comfyui_or_exit())
    import comfy.utils
    from safetensors.torch import save_file

    from pixart_sigma_nodes.nodes import model_loading

    comfy.utils.PROGRESS_BAR_ENABLED = False
    comfy_nodes = importlib.import_module("nodes")
    easycache = importlib.import_module("comfy_extras.nodes_easycache").EasyCacheNode

    transformer = diffusers_transformer(args.depth)
    randomize(transformer, torch.Generator().manual_seed(0))
    null_caption = torch.randn(300, 4096, generator=torch.Generator().manual_seed(1)) * 0.02
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "dit.safetensors")
        save_file(original_layout(transformer, null_caption), path)
        plain = model_loading.load_dit_patcher(path, "fp32")
    cached = easycache.execute(model=plain, reuse_threshold=args.threshold, start_percent=args.start,
                               end_percent=args.end, verbose=False)[0]
    generator = torch.Generator().manual_seed(2)
    conds = []
    for length in (40, 1):
        mask = torch.zeros(1, 300)
        mask[0, :length] = 1
        conds.append([[torch.randn(1, 300, 4096, generator=generator) * 0.1, {"attention_mask": mask}]])
    side = args.size // 8
    latent = {"samples": torch.zeros(1, 4, side, side)}

    def run(model):
        return comfy_nodes.common_ksampler(model, 3, args.steps, 4.5, "dpmpp_2m", "pixart_reference", *conds,
                                           latent)[0]["samples"]

    timings = interleaved({"plain": lambda: run(plain), "EasyCache": lambda: run(cached)}, args.repeats)
    medians = timings.medians()
    skipped, total = counter.skipped[-1]
    difference = (timings.results["EasyCache"] - timings.results["plain"]).abs().max() / timings.results["plain"].std()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, ComfyUI at "
          f"{os.environ.get('COMFYUI_PATH')}")
    print(f"{args.size} px, {args.depth} blocks at PixArt-Σ width, {args.steps} steps dpmpp_2m / pixart_reference, "
          f"CFG 4.5; EasyCache threshold {args.threshold}, start {args.start}, end {args.end}")
    print(f"plain {medians['plain']:.2f} s, EasyCache {medians['EasyCache']:.2f} s (medians of {args.repeats}): "
          f"ratio {medians['EasyCache'] / medians['plain']:.3f}; EasyCache skipped {skipped}/{total} steps in every run: "
          f"{counter.skipped}; latent max difference / std {difference:.3f}")


if __name__ == "__main__":
    main()
