"""CPU benchmark: one DiT forward, side by side in one run, on the same random weights.

    python bench/dit_forward_cpu.py [--tokens 1024 4096] [--repeats 5]
    COMFYUI_PATH=/path/to/ComfyUI python bench/dit_forward_cpu.py      # adds the ComfyUI rows

Rows (bench/fixtures/timing.py: interleaved, median of --repeats after a warm-up; weights from
bench/fixtures/models.py random_pair):
  ours                 the engine's PixArtDiT (pixart_sigma_nodes.pixart.dit): plain torch, torch SDPA
  diffusers            diffusers' PixArtTransformer2DModel (SDPA)
  ours in ComfyUI      nodes' ComfyPixArtDiT on comfy.ops with ComfyUI's attention dispatch, as the nodes run it
  ComfyUI-native       comfy.ldm.pixart's PixArtMS with ComfyUI's default dispatch (sub-quadratic on the CPU)
  ComfyUI-native SDPA  the same with ComfyUI's "pytorch" attention, the one ours picks on the CPU
Hidden 1152, 16 heads of 72, MLP 4608, `--depth` blocks (2), batch 2 (cond + uncond), 300 caption tokens with
40 real: ours and diffusers get all 300 with the mask (as our T5 loader produces them), ComfyUI-native gets the
40 real tokens only (as ComfyUI's own PixArt text encoder produces them). Ratios: ours / diffusers, and ours in
ComfyUI / each ComfyUI-native row.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.fixtures.models import random_pair  # noqa: E402
from bench.fixtures.pack import comfyui_path, import_comfy, import_pack  # noqa: E402
from bench.fixtures.timing import interleaved  # noqa: E402

import_pack()
from pixart_sigma_nodes.pixart.dit import PixArtDiT  # noqa: E402

log = logging.getLogger("bench.dit_forward_cpu")
REAL_TOKENS = 40


def comfy_rows(ours: PixArtDiT, context, mask) -> dict:
    """The three ComfyUI rows as callables of x, or {} without a ComfyUI checkout."""
    comfyui = comfyui_path()
    if comfyui is None:
        log.info("COMFYUI_PATH not set: the ComfyUI rows are left out")
        return {}
    import_comfy(comfyui)
    import comfy.ldm.modules.attention as comfy_attention
    import comfy.ldm.pixart.blocks as native_blocks
    import comfy.ldm.pixart.pixartms as native_module
    import comfy.ops

    from pixart_sigma_nodes.nodes.dit_model import ComfyPixArtDiT

    ops = comfy.ops.disable_weight_init
    state = ours.state_dict()
    in_comfy = ComfyPixArtDiT(ours.config, operations=ops).eval()
    in_comfy.load_state_dict(state)
    cfg = ours.config
    native = native_module.PixArtMS(input_size=cfg.sample_size, patch_size=cfg.patch_size, in_channels=4,
                                    hidden_size=cfg.hidden_size, depth=cfg.depth, num_heads=cfg.num_heads,
                                    learn_sigma=True, caption_channels=cfg.caption_channels,
                                    pe_interpolation=cfg.pe_interpolation, model_max_length=cfg.caption_tokens,
                                    micro_condition=False, operations=ops).eval()
    missing, unexpected = native.load_state_dict(state, strict=False)
    if unexpected or any("y_embedding" not in key for key in missing):  # the null caption is unused at inference
        raise RuntimeError(f"ComfyUI-native did not take our weights: missing {missing}, unexpected {unexpected}")
    real = context[:, :REAL_TOKENS]  # (B, 40, 4096)
    t = torch.full((context.shape[0],), 500.0)

    def native_sdpa(x):
        default = native_blocks.optimized_attention
        native_blocks.optimized_attention = comfy_attention.attention_pytorch
        try:
            return native(x, t, real, transformer_options={})
        finally:
            native_blocks.optimized_attention = default

    log.info("ComfyUI's default attention on this machine: %s", native_blocks.optimized_attention.__name__)
    return {"ours in ComfyUI": lambda x: in_comfy(x, t, context, attention_mask=mask, transformer_options={}),
            "ComfyUI-native": lambda x: native(x, t, real, transformer_options={}),
            "ComfyUI-native SDPA": native_sdpa}


def main():
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096],
                        help="image tokens (latent side = sqrt(tokens) * 2)")
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    log.info("machine: %s, %d threads, torch %s; hidden 1152, 16 heads, %d blocks, batch 2, 300 caption tokens "
             "(%d real)", platform.machine(), torch.get_num_threads(), torch.__version__, args.depth, REAL_TOKENS)

    ours, reference = random_pair(args.depth)
    generator = torch.Generator().manual_seed(1)
    context = torch.randn(2, 300, 4096, generator=generator)  # (B, L, C)
    mask = torch.zeros(2, 300)
    mask[:, :REAL_TOKENS] = 1
    t = torch.full((2,), 500.0)
    rows = {"ours": lambda x: ours(x, t, context, mask),
            "diffusers": lambda x: reference(x, encoder_hidden_states=context, timestep=t,
                                             encoder_attention_mask=mask, return_dict=False)[0],
            **comfy_rows(ours, context, mask)}
    for tokens in args.tokens:
        side = int(tokens ** 0.5) * 2
        x = torch.randn(2, 4, side, side, generator=generator)  # (B, 4, h, w)
        with torch.inference_mode():
            timings = interleaved({name: functools.partial(fn, x) for name, fn in rows.items()}, args.repeats)
        medians = timings.medians()
        log.info("-- %d tokens (latent %dx%d)", tokens, side, side)
        for name, median in medians.items():
            difference = (timings.results[name][:, :4] - timings.results["ours"][:, :4]).abs().max().item()
            log.info("%-20s median %7.3f s  (%s)  max |difference to ours| %.1e", name, median,
                     ", ".join(f"{v:.2f}" for v in timings.samples[name]), difference)
        log.info("ratio ours / diffusers = %.3f", medians["ours"] / medians["diffusers"])
        for native in ("ComfyUI-native", "ComfyUI-native SDPA"):
            if native in medians:
                log.info("ratio ours in ComfyUI / %s = %.3f", native, medians["ours in ComfyUI"] / medians[native])


if __name__ == "__main__":
    main()
