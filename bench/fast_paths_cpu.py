"""CPU benchmark: each engine fast path measured before/after, interleaved in one process.

    python bench/fast_paths_cpu.py [--tokens 1024 4096] [--repeats 5] [--steps 4] [--skip-compile]

Hidden 1152, 16 heads, 2 blocks, batch 2 (cond + uncond), 300 caption tokens of which 40 and 1 are real (a
prompt and the empty negative), fp32, torch SDPA attention. Fast paths:
- trim: caption positions that are padding in every sample dropped before the caption projection and
  cross-attention (before: the full 300 tokens with the mask);
- caption once: encode_caption (caption projection + every block's cross-attention K/V) once per sampling run
  instead of at every step (`--steps` forwards per run);
- pos-embed cache: the 2-D sin-cos table computed once per grid size instead of at every step;
- compile: each transformer block through torch.compile (inductor) vs eager; compile time reported apart.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.fixtures.models import sigma_width_dit  # noqa: E402
from bench.fixtures.pack import import_pack  # noqa: E402
from bench.fixtures.timing import interleaved, measure  # noqa: E402

import_pack()
import pixart_sigma_nodes.pixart.encoded_caption as caption_module  # noqa: E402
from pixart_sigma_nodes.pixart import embeddings  # noqa: E402

log = logging.getLogger("bench.fast_paths_cpu")


def report(label: str, medians: dict[str, float], before: str, after: str):
    log.info("%-36s before %8.3f s  after %8.3f s  after/before %.3f", label, medians[before], medians[after],
             medians[after] / medians[before])


def no_trim(context, mask):
    return context, mask


def bench_trim(model, x, t, context, mask, repeats):
    """Forward with and without the padding trim (monkeypatched out for 'before')."""
    trim = caption_module.trim_padding

    def untrimmed():
        caption_module.trim_padding = no_trim
        try:
            return model(x, t, context, mask)
        finally:
            caption_module.trim_padding = trim

    with torch.inference_mode():
        diff = (untrimmed() - model(x, t, context, mask)).abs().max().item()
        result = interleaved({"before": untrimmed, "after": lambda: model(x, t, context, mask)}, repeats).medians()
    return result, diff


def bench_caption_once(model, x, t, context, mask, steps, repeats):
    """`steps` forwards encoding the caption at each vs once per run (the encoding counted in 'after')."""
    def every_step():
        for _ in range(steps):
            model(x, t, context, mask)

    def once():
        caption = model.encode_caption(context, mask)
        for _ in range(steps):
            model(x, t, None, caption=caption)

    with torch.inference_mode():
        result = interleaved({"before": every_step, "after": once}, repeats).medians()
        result["encode"] = interleaved({"encode": lambda: model.encode_caption(context, mask)}, repeats).median("encode")
    return result


def bench_pos_embed(model, x, repeats):
    """The sin-cos table per call (before) vs the cached one (after), against one forward's time."""
    cfg = model.config
    grid = (x.shape[-2] // cfg.patch_size, x.shape[-1] // cfg.patch_size)
    args = (cfg.hidden_size, grid[0], grid[1], cfg.base_size, cfg.pe_interpolation)

    def uncached():
        return embeddings._sincos_2d_cpu(*args).to(dtype=x.dtype).unsqueeze(0)  # (1, N, D)

    def cached():
        return embeddings.sincos_pos_embed_2d(*args, x.device, x.dtype)  # (1, N, D)

    return interleaved({"before": uncached, "after": cached}, repeats).medians()


def bench_compile(model, x, t, context, mask, repeats):
    compiled = sigma_width_dit(len(model.blocks))
    compiled.load_state_dict(model.state_dict())
    eager_blocks = list(compiled.blocks)
    for index, block in enumerate(eager_blocks):
        compiled.blocks[index] = torch.compile(block)
    caption = model.encode_caption(context, mask)
    with torch.inference_mode():
        compile_s, first = measure(lambda: compiled(x, t, None, caption=caption))
        diff = (first - model(x, t, None, caption=caption)).abs().max().item()
        result = interleaved({"before": lambda: model(x, t, None, caption=caption),
                              "after": lambda: compiled(x, t, None, caption=caption)}, repeats).medians()
    return result, compile_s, diff


def main():
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--skip-compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    log.info("machine: %s, %d threads, torch %s", platform.machine(), torch.get_num_threads(), torch.__version__)
    log.info("shape: hidden 1152, 16 heads, %d blocks, batch 2, 300 caption tokens (40 and 1 real), fp32", args.depth)

    model = sigma_width_dit(args.depth)
    generator = torch.Generator().manual_seed(1)
    context = torch.randn(2, 300, 4096, generator=generator)  # (B, L, C)
    mask = torch.zeros(2, 300)
    mask[0, :40] = 1
    mask[1, :1] = 1
    t = torch.tensor([500.0, 500.0])
    for tokens in args.tokens:
        side = int(tokens ** 0.5) * 2
        x = torch.randn(2, 4, side, side, generator=generator)  # (B, 4, h, w)
        log.info("-- %d image tokens (%d px)", tokens, side * 8)
        result, diff = bench_trim(model, x, t, context, mask, args.repeats)
        report("trim T5 padding (one forward)", result, "before", "after")
        log.info("%-36s max |difference| %.1e", "", diff)
        result = bench_caption_once(model, x, t, context, mask, args.steps, args.repeats)
        report(f"caption once ({args.steps} forwards)", result, "before", "after")
        log.info("%-36s encode_caption alone %.4f s", "", result["encode"])
        result = bench_pos_embed(model, x, args.repeats)
        report("pos-embed cache (table only)", result, "before", "after")
        if not args.skip_compile:
            result, compile_s, diff = bench_compile(model, x, t, context, mask, args.repeats)
            report("torch.compile blocks (one forward)", result, "before", "after")
            log.info("%-36s first call (compiling) %.1f s, max |difference| %.1e", "", compile_s, diff)


if __name__ == "__main__":
    main()
