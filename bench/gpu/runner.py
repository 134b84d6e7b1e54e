"""The GPU harness's sections, in their documented order, and the loop that runs them: each section's result (or its
error, or why it was skipped) and duration recorded, the JSON rewritten after every section."""
from __future__ import annotations

import logging
import time

from . import attention, dtype, memory, speed, summary, versus_diffusers
from .harness import Harness
from .report import write_json

log = logging.getLogger("gpu_harness")
SECTIONS = {"step": speed.step, "image": speed.image, "dtype": dtype.dtype, "kv": speed.kv, "memory": memory.memory,
            "attention": attention.attention, "diffusers": versus_diffusers.diffusers, "compile": speed.compiled,
            "summary": summary.summary}
# Run order: memory first, as in a fresh process (no other sizes' buffers cached yet); the long optional runs
# (image at 4K, compile) late, so that a tight budget skips them rather than the comparisons.
RUN_ORDER = ("memory", "step", "dtype", "kv", "attention", "diffusers", "image", "compile", "summary")


def run(h: Harness, sections: list[str], out: str) -> dict:
    order = ["meta", "config", *SECTIONS]
    for name in (s for s in RUN_ORDER if s in sections):
        if name != "summary" and h.remaining() <= 0:
            h.results[name] = {"skipped": f"budget of {h.args.budget_s:g} s used up"}
        else:
            log.info("== %s", name)
            start = time.perf_counter()
            try:
                h.results[name] = SECTIONS[name](h)
            except Exception as err:  # record and go on: one GPU run should report every section it can
                log.exception("section %s failed", name)
                h.results[name] = {"error": f"{type(err).__name__}: {err}"}
                h.free_memory()
            h.results[name]["section_s"] = time.perf_counter() - start
        write_json(out, h.results, order)
    return h.results
