"""GPU benchmark of the PixArt-Σ engine, in one command, for an H100/H200 (finishes well inside 10 minutes):

    python bench/gpu_harness.py --out bench/results/gpu-$(date +%F).json
    COMFYUI_PATH=/path/to/ComfyUI python bench/gpu_harness.py --out ...   # dtype figures on ComfyUI's own ops

Full-size PixArt-Σ with random weights (28 blocks, hidden 1152, 16 heads of 72, mlp 4608, T5 width 4096, 300
caption tokens with 40 / 120 real ones for uncond / cond), built once as diffusers' PixArtTransformer2DModel and
converted to our DiT, so both run exactly the same weights. bf16 unless a section says otherwise; CFG batch of 2;
20 steps of DPM-Solver++ 2M (the pipeline's scheduler), guidance 4.5. Sections (JSON keys; the file is rewritten
after each, so a timeout keeps what finished; code in bench/gpu/):
  step       s/step with CFG at 1024 / 2048 / 4096 px
  image      20-step s/image (DiT + scheduler; caption encoded once per image; no T5, no VAE)
  dtype      s/step at 1024 px with bf16, fp16 and fp8_e4m3fn weights (fp8 computed in bf16), each labelled with its
             "casting": ComfyUI's own ops (comfy.ops.manual_cast for fp8) when ComfyUI is importable, else a stand-in
  kv         KV compression 2x2 avg on the deep half / all layers at 2048 and 4096 px, and a 4K image with all layers
  memory     peak VRAM of a 20-step 1024 px image with only the DiT on the GPU
  attention  the attention kernels that ran (profiler) and torch's SDPA backend switches
  diffusers  PixArtSigmaPipeline on the same weights and inputs: s/image, our speedup, latent difference, s/step
  compile    (--compile) each block under torch.compile, s/step at 1024 px
  summary    analytic FLOPs, achieved TFLOP/s, the design's compute bound, and the performance targets pass/fail
Images whose predicted time would overrun --budget-s (and 4K images under --quick) are reported as 20 x s/step,
marked "estimated". CPU smoke run of every section on a tiny model (seconds; what tests/test_gpu_harness_smoke.py
runs): python bench/gpu_harness.py --device cpu --smoke --out /tmp/gpu-smoke.json
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.gpu.harness import Harness  # noqa: E402
from bench.gpu.runner import SECTIONS, run  # noqa: E402

log = logging.getLogger("gpu_harness")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON file, rewritten after every section")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--sizes", default="1024,2048,4096", help="image sides in px, comma-separated")
    parser.add_argument("--only", default="", help=f"comma-separated sections among {', '.join(SECTIONS)}")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per s/step (default 5, --quick 2, "
                                                                   "--smoke 1); images use up to 3")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 4K images estimated, diffusers at 1024 only")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd blocks at the smallest size")
    parser.add_argument("--smoke", action="store_true", help="tiny model in float32 (2 blocks, 2 heads of 72), for CPU")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="wall-clock budget: later sections are skipped and long images estimated past it")
    args = parser.parse_args(argv)
    args.sizes = sorted({int(part) for part in args.sizes.split(",") if part.strip()})
    if not args.sizes or any(px % 256 for px in args.sizes):
        parser.error(f"--sizes {args.sizes}: give image sides in px, each a multiple of 256 (e.g. 1024,2048,4096)")
    if args.repeats is None:
        args.repeats = 1 if args.smoke else 2 if args.quick else 5
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: time at least one call")
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()] or \
        [s for s in SECTIONS if s != "compile" or args.compile]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown sections {unknown}; choose among {', '.join(SECTIONS)}")
    if "summary" not in args.sections:
        args.sections.append("summary")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device visible to torch; use --device cpu --smoke for a CPU check")
    return args


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    start = time.perf_counter()
    with torch.inference_mode():
        results = run(Harness(args, argv), args.sections, args.out)
    log.info("done in %.0f s; results in %s", time.perf_counter() - start, args.out)
    return results


if __name__ == "__main__":
    main()
