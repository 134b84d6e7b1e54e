"""CPU benchmark: sampling time with KV compression (2x2, all layers, avg) / without, at PixArt's real width.

Hidden 1152, 16 heads, 2 blocks, 4096 image tokens (1024 px), CFG batch of 2, a few steps of PixArtSigmaPipeline's
loop and scheduler (DPM-Solver++ 2M, bench/fixtures/sampling.py) with the caption encoded once per run, same
weights; compressed and uncompressed runs interleaved in one process.
Run: python bench/kv_compress_cpu.py [--steps 2] [--repeats 3] [--ratio 2] [--layers all]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.fixtures.models import sigma_width_dit  # noqa: E402
from bench.fixtures.pack import import_pack  # noqa: E402
from bench.fixtures.sampling import sample  # noqa: E402
from bench.fixtures.schedulers import pixart_sigma_scheduler  # noqa: E402
from bench.fixtures.timing import interleaved  # noqa: E402

import_pack()
from pixart_sigma_nodes.pixart.kv_compress import KVCompress, parse_layers  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="sampling steps timed per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ratio", type=int, default=2)
    parser.add_argument("--layers", default="all")
    parser.add_argument("--mode", default="avg")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = sigma_width_dit(args.depth)
    generator = torch.Generator().manual_seed(1)
    side = int(args.tokens ** 0.5) * 2
    noise = torch.randn(1, 4, side, side, generator=generator)  # (1, 4, h, w)
    context = torch.randn(2, 300, 4096, generator=generator)  # (B, L, C): uncond, cond
    mask = torch.zeros(2, 300)
    mask[0, :1] = 1  # empty negative: EOS only
    mask[1, :40] = 1
    kv = KVCompress(args.ratio, parse_layers(args.layers, args.depth), args.mode)
    scheduler = pixart_sigma_scheduler()

    def run(setting):
        return lambda: sample(model, noise, model.encode_caption(context, mask), scheduler, setting, args.steps)

    with torch.inference_mode():
        timings = interleaved({"off": run(None), "kv": run(kv)}, args.repeats)
    off, comp = timings.median("off"), timings.median("kv")
    print(f"machine: {platform.machine()} threads={args.threads} torch={torch.__version__}")
    print(f"shape: hidden 1152, 16 heads, {args.depth} blocks, {args.tokens} tokens, CFG batch 2, {args.steps} steps")
    print(f"uncompressed median {off:7.2f} s  ({', '.join(f'{v:.2f}' for v in timings.samples['off'])})")
    print(f"KV {args.ratio}x{args.ratio} {args.mode} layers={args.layers} median {comp:7.2f} s  "
          f"({', '.join(f'{v:.2f}' for v in timings.samples['kv'])})")
    print(f"ratio compressed / uncompressed = {comp / off:.3f}")


if __name__ == "__main__":
    main()
