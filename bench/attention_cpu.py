"""CPU benchmark: ComfyUI's attention functions on PixArt's shapes (16 heads, head dim 72), interleaved in one
process. Needs a ComfyUI checkout:

    COMFYUI_PATH=/path/to/ComfyUI python bench/attention_cpu.py [--tokens 1024 4096] [--repeats 5]

Self-attention over the image tokens (batch 2: cond + uncond) and cross-attention to 40 caption keys with a
padding bias. ComfyUI on the CPU picks sub-quadratic attention unless told otherwise; nodes/attention.py picks
its "pytorch" (fused SDPA) function instead on the strength of this comparison. First, before anything else has
raised the process's peak memory, one SDPA self-attention over `--memory-tokens` (16384: a 2K image) reports how
much the peak resident memory grew beyond its inputs, to show that SDPA's CPU kernel never builds the N x N matrix.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import platform
import resource
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.fixtures.pack import comfyui_or_exit, import_comfy  # noqa: E402
from bench.fixtures.timing import interleaved, measure  # noqa: E402

log = logging.getLogger("bench.attention_cpu")
SUB_QUAD = "sub_quad (ComfyUI's CPU default)"
SDPA = "pytorch SDPA (ours on CPU)"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def sdpa_memory(sdpa, tokens: int, heads: int, width: int, generator) -> None:
    """Peak resident memory added by one self-attention call over `tokens`, against the N x N scores' size."""
    q, k, v = torch.randn(3, 2, tokens, width, generator=generator)  # 3 x (B, N, heads * 72)
    before = peak_rss_mib()
    with torch.inference_mode():
        seconds, out = measure(lambda: sdpa(q, k, v, heads))  # (B, N, heads * 72)
    grown = peak_rss_mib() - before
    scores = 2 * heads * tokens * tokens * 4 / 2**20  # fp32 (B, heads, N, N)
    log.info("%d tokens SDPA self-attention: %.1f s, peak memory +%.0f MiB (output %.0f MiB; the N x N scores "
             "would be %.0f MiB)", tokens, seconds, grown, out.numel() * 4 / 2**20, scores)


def main():
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-tokens", type=int, default=16384, help="0 leaves the memory check out")
    args = parser.parse_args()
    import_comfy(comfyui_or_exit())
    import comfy.ldm.modules.attention as comfy_attention

    torch.set_num_threads(os.cpu_count())
    functions = {SUB_QUAD: comfy_attention.attention_sub_quad, "split": comfy_attention.attention_split,
                 SDPA: comfy_attention.get_attention_function("pytorch", None)}
    heads, width = 16, 16 * 72
    log.info("machine: %s, %d threads, torch %s", platform.machine(), torch.get_num_threads(), torch.__version__)
    generator = torch.Generator().manual_seed(0)
    if args.memory_tokens:
        sdpa_memory(functions[SDPA], args.memory_tokens, heads, width, generator)
    for tokens in args.tokens:
        q = torch.randn(2, tokens, width, generator=generator)  # (B, N, heads * 72)
        k, v = torch.randn(2, 2, tokens, width, generator=generator)
        ck, cv = torch.randn(2, 2, 40, width, generator=generator)  # caption keys/values (B, 40, heads * 72)
        bias = torch.zeros(2, 1, 1, 40)
        bias[1, ..., 1:] = -torch.finfo(torch.float32).max  # the empty negative prompt: one real token
        cases = {"self": (q, k, v, None), "cross": (q, ck, cv, bias)}
        for case, (qq, kk, vv, mask) in cases.items():
            with torch.inference_mode():
                timings = interleaved({name: functools.partial(fn, qq, kk, vv, heads, mask=mask)
                                       for name, fn in functions.items()}, args.repeats)
            base = timings.median(SUB_QUAD)
            for name in functions:
                median = timings.median(name)
                difference = (timings.results[name] - timings.results[SUB_QUAD]).abs().max().item()
                log.info("%5d tokens %-5s %-34s %7.3f s  ratio to sub_quad %.2f  max |diff| %.1e", tokens, case, name,
                         median, median / base, difference)


if __name__ == "__main__":
    main()
