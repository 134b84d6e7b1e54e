"""CPU benchmark: our DiT forward vs diffusers' PixArtTransformer2DModel at PixArt's real width.

Same random weights, same inputs, interleaved runs in one process; prints the ratio ours / diffusers
(lower is better). Shapes: hidden 1152, 16 heads, 2 blocks, 4096 image tokens (1024 px), batch 2,
300 caption tokens. Run: python bench/dit_forward_cpu.py [--tokens 4096] [--repeats 5]
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

from pixart.checkpoint.detect import detect_config  # noqa: E402
from pixart.checkpoint.layouts import diffusers_to_internal  # noqa: E402
from pixart.dit import PixArtDiT  # noqa: E402


def build_pair(depth: int, caption_channels: int):
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    reference = PixArtTransformer2DModel(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=depth,
        sample_size=128, patch_size=2, cross_attention_dim=1152, caption_channels=caption_channels,
        norm_type="ada_norm_single", use_additional_conditions=False, interpolation_scale=2,
    ).eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.copy_(torch.randn_like(param) * 0.02)
    state = diffusers_to_internal(dict(reference.state_dict()), "PixArt-Sigma benchmark")
    config = detect_config(state, "PixArt-Sigma benchmark", dict(reference.config))
    ours = PixArtDiT(config).eval()
    ours.load_state_dict(state)
    return ours, reference


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096, help="image tokens (side = sqrt(tokens) * 2 latent px)")
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    side = int(args.tokens ** 0.5) * 2
    ours, reference = build_pair(args.depth, 4096)
    x = torch.randn(args.batch, 4, side, side)
    t = torch.full((args.batch,), 500.0)
    context = torch.randn(args.batch, 300, 4096)
    mask = torch.zeros(args.batch, 300)
    mask[:, :40] = 1

    def run_ours():
        return ours(x, t, context, mask)

    def run_reference():
        return reference(x, encoder_hidden_states=context, timestep=t, encoder_attention_mask=mask,
                         return_dict=False)[0]

    times = {"ours": [], "diffusers": []}
    with torch.inference_mode():
        diff = (run_ours() - run_reference()).abs().max().item()  # also warms both up
        for _ in range(args.repeats):
            for name, fn in (("ours", run_ours), ("diffusers", run_reference)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    ours_s, ref_s = statistics.median(times["ours"]), statistics.median(times["diffusers"])
    print(f"machine: {platform.machine()} {platform.processor() or ''} threads={args.threads} torch={torch.__version__}")
    print(f"shape: hidden 1152, 16 heads, {args.depth} blocks, {args.tokens} tokens, batch {args.batch}")
    print(f"max |ours - diffusers| = {diff:.2e}")
    print(f"ours      median {ours_s * 1000:8.1f} ms  ({', '.join(f'{v * 1000:.0f}' for v in times['ours'])})")
    print(f"diffusers median {ref_s * 1000:8.1f} ms  ({', '.join(f'{v * 1000:.0f}' for v in times['diffusers'])})")
    print(f"ratio ours / diffusers = {ours_s / ref_s:.3f}")


if __name__ == "__main__":
    main()
