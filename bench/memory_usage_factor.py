"""Measure PixArt's memory_usage_factor for ComfyUI's memory estimate.

ComfyUI reserves `area * dtype_size * 0.01 * memory_usage_factor` MiB for one model call with flash-type
attention (area = batch * latent height * latent width). This runs one forward of a full-width PixArt-Σ
(hidden 1152, 16 heads) in a fresh process per size and reads the peak resident memory above the
weights-loaded baseline, then solves for the factor. Activations are freed block by block, so 2 blocks
measure the same peak as 28. Run: python bench/memory_usage_factor.py
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(side: int, batch: int) -> None:
    sys.path.insert(0, ROOT)
    import torch

    from bench.fixtures.models import sigma_width_dit
    from bench.fixtures.pack import import_pack

    import_pack()
    torch.set_num_threads(2)
    model = sigma_width_dit(2)  # random weights drawn in place: no temporaries raise the baseline below
    x = torch.randn(batch, 4, side, side)  # (B, 4, h, w)
    context = torch.randn(batch, 300, 4096)  # (B, L, C)
    mask = torch.zeros(batch, 300)
    mask[:, :120] = 1
    t = torch.full((batch,), 500.0)
    with torch.inference_mode():
        model(x[:, :, :8, :8], t, context, mask)  # warm up allocator and kernels at a tiny size
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        model(x, t, context, mask)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"side": side, "batch": batch, "activation_bytes": peak - baseline}))


def main() -> None:
    rows = []
    for side in (64, 96, 128):
        out = subprocess.run([sys.executable, __file__, "--child", str(side), "2"], capture_output=True, text=True,
                             check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        area = row["batch"] * side * side
        row["factor"] = row["activation_bytes"] / (area * 4 * 0.01 * 1024 * 1024)  # fp32: dtype_size 4
        rows.append(row)
        print(f"latent {side}x{side} batch {row['batch']}: activations {row['activation_bytes'] / 2**20:7.1f} MiB "
              f"-> memory_usage_factor {row['factor']:.3f}")
    print(f"max factor: {max(r['factor'] for r in rows):.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
