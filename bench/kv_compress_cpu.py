"""CPU benchmark: sampling time with KV compression (2x2, all layers, avg) / without, at PixArt's real width.

Hidden 1152, 16 heads, 2 blocks, 4096 image tokens (1024 px), CFG batch of 2, a few DPM-Solver++ 2M steps
on the reference schedule, same weights; compressed and uncompressed runs interleaved in one process.
Run: python bench/kv_compress_cpu.py [--steps 2] [--repeats 3] [--ratio 2] [--layers all]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import sigma_width_config  # noqa: E402
from pixart.dit import PixArtDiT  # noqa: E402
from pixart.kv_compress import KVCompress, parse_layers  # noqa: E402
from pixart.schedule import reference_sigmas, reference_timesteps  # noqa: E402


def sample(model, noise, context, mask, steps, cfg, kv):
    """DPM-Solver++ 2M (epsilon model, VE form) with classifier-free guidance."""
    sigmas = reference_sigmas(steps).float()
    timesteps = reference_timesteps(steps)
    x = noise * (sigmas[0] ** 2 + 1).sqrt()
    previous = None
    for i, t in enumerate(timesteps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        scaled = x / (sigma**2 + 1).sqrt()
        eps = model(torch.cat([scaled, scaled]), torch.full((2,), float(t)), context, mask, kv_compress=kv)[:, :4]
        eps_uncond, eps_cond = eps.chunk(2)
        denoised = x - sigma * (eps_uncond + cfg * (eps_cond - eps_uncond))
        if sigma_next == 0:
            x = denoised
            break
        h = torch.log(sigma / sigma_next)
        if previous is None:
            x = (sigma_next / sigma) * x - torch.expm1(-h) * denoised
        else:
            r = torch.log(sigmas[i - 1] / sigma) / h
            corrected = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
            x = (sigma_next / sigma) * x - torch.expm1(-h) * corrected
        previous = denoised
    return x


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

    torch.manual_seed(0)
    model = PixArtDiT(sigma_width_config(args.depth)).eval()
    for param in model.parameters():
        torch.nn.init.normal_(param, std=0.02)
    side = int(args.tokens ** 0.5) * 2
    noise = torch.randn(1, 4, side, side)
    context = torch.randn(2, 300, 4096)
    mask = torch.zeros(2, 300)
    mask[0, :1] = 1  # empty negative: EOS only
    mask[1, :40] = 1
    kv = KVCompress(args.ratio, parse_layers(args.layers, args.depth), args.mode)
    times = {"off": [], "kv": []}
    with torch.inference_mode():
        sample(model, noise, context, mask, 1, 4.5, kv)  # warm-up
        for _ in range(args.repeats):
            for name, setting in (("off", None), ("kv", kv)):
                start = time.perf_counter()
                sample(model, noise, context, mask, args.steps, 4.5, setting)
                times[name].append(time.perf_counter() - start)
    off, comp = statistics.median(times["off"]), statistics.median(times["kv"])
    print(f"machine: {platform.machine()} threads={args.threads} torch={torch.__version__}")
    print(f"shape: hidden 1152, 16 heads, {args.depth} blocks, {args.tokens} tokens, CFG batch 2, {args.steps} steps")
    print(f"uncompressed median {off:7.2f} s  ({', '.join(f'{v:.2f}' for v in times['off'])})")
    print(f"KV {args.ratio}x{args.ratio} {args.mode} layers={args.layers} median {comp:7.2f} s  "
          f"({', '.join(f'{v:.2f}' for v in times['kv'])})")
    print(f"ratio compressed / uncompressed = {comp / off:.3f}")


if __name__ == "__main__":
    main()
