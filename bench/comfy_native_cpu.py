"""CPU benchmark: our DiT vs ComfyUI-native comfy.ldm.pixart (PixArtMS), same weights, both with ComfyUI's ops
and attention dispatch, interleaved in one process. Needs a ComfyUI checkout:

    COMFYUI_PATH=/path/to/ComfyUI python bench/comfy_native_cpu.py [--tokens 1024 4096] [--repeats 5]

Hidden 1152, 16 heads, 2 blocks, batch 2, 300 caption tokens (ComfyUI-native gets the real tokens only, as its
own text encoder produces them; ours gets 300 with the mask, as our T5 loader produces them). ComfyUI-native runs
twice: with ComfyUI's default attention dispatch (sub-quadratic on the CPU), and with the "pytorch" SDPA attention
that ours picks on the CPU (nodes/attention.py), so the ratio is shown with and without that choice.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--real-tokens", type=int, default=40)
    args = parser.parse_args()
    sys.path.insert(0, ROOT)
    from bench.common import comfyui_or_exit, sigma_width_config

    comfyui = comfyui_or_exit()
    from host.comfy_host import import_comfy

    import_comfy(comfyui)
    import comfy.ldm.modules.attention as comfy_attention
    import comfy.ldm.pixart.blocks as native_blocks
    import comfy.ldm.pixart.pixartms as native_module
    import comfy.ops
    import torch
    from pixart_sigma_nodes.nodes.dit_model import ComfyPixArtDiT

    torch.set_num_threads(os.cpu_count())
    ops = comfy.ops.disable_weight_init
    config = sigma_width_config(2, has_null_caption=True)
    ours = ComfyPixArtDiT(config, operations=ops).eval()
    torch.manual_seed(0)
    for param in ours.parameters():
        torch.nn.init.normal_(param, std=0.02)
    native = native_module.PixArtMS(input_size=128, patch_size=2, in_channels=4, hidden_size=1152, depth=2,
                                    num_heads=16, learn_sigma=True, caption_channels=4096, pe_interpolation=2.0,
                                    model_max_length=300, micro_condition=False, operations=ops).eval()
    missing, unexpected = native.load_state_dict(ours.state_dict(), strict=False)
    print(f"native load: missing {missing}, unexpected {unexpected}")
    context = torch.randn(2, 300, 4096)
    mask = torch.zeros(2, 300)
    mask[:, : args.real_tokens] = 1
    real = context[:, : args.real_tokens]
    t = torch.full((2,), 500.0)
    for tokens in args.tokens:
        side = int(tokens**0.5) * 2
        x = torch.randn(2, 4, side, side)
        def native_sdpa(x=x):
            default = native_blocks.optimized_attention
            native_blocks.optimized_attention = comfy_attention.attention_pytorch
            try:
                return native(x, t, real, transformer_options={})
            finally:
                native_blocks.optimized_attention = default

        runs = {"ours": lambda x=x: ours(x, t, context, attention_mask=mask, transformer_options={}),
                "native": lambda x=x: native(x, t, real, transformer_options={}),
                "native_sdpa": native_sdpa}
        times = {name: [] for name in runs}
        with torch.inference_mode():
            diff = (runs["ours"]() - runs["native"]()).abs().max().item()
            for _ in range(args.repeats):
                for name, fn in runs.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
        a, b, c = (statistics.median(times[name]) for name in ("ours", "native", "native_sdpa"))
        print(f"{tokens} tokens: ours {a:.2f} s, ComfyUI-native {b:.2f} s ({native_blocks.optimized_attention.__name__}), "
              f"ratio {a / b:.3f}; ComfyUI-native with SDPA {c:.2f} s, ratio {a / c:.3f} (max |difference| {diff:.2e})")


if __name__ == "__main__":
    main()
