"""What became of each prompt, and the run's summary: shared by the direct mode and the Ray mode."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .jobs import Job

log = logging.getLogger("batch_client")


@dataclass
class Result:
    job: Job
    worker: str | None = None  # the server URL (direct mode) or the Ray worker that ran it
    files: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0  # the prompt's time on its server: submit to images fetched
    finished_at: float | None = None  # when its images were fetched (Unix time, the worker's clock); None: not run

    @property
    def done(self) -> bool:
        return self.error is None and bool(self.files)


def summary(results: dict[int, Result], elapsed: float) -> str:
    done = [r for r in results.values() if r.done]
    failed = [r for r in results.values() if not r.done]
    per_worker: dict[str, int] = {}
    for result in done:
        per_worker[result.worker] = per_worker.get(result.worker, 0) + 1
    lines = [f"{len(done)} of {len(results)} prompts done, {len(failed)} failed, {elapsed:.1f} s"]
    lines += [f"  {worker}: {count} prompts" for worker, count in sorted(per_worker.items())]
    for result in sorted(failed, key=lambda r: r.job.index):
        lines.append(f"  FAILED job {result.job.index} ({result.job.prompt[:60]!r}): {result.error or 'no image saved'}")
    return "\n".join(lines)


def exit_status(results: dict[int, Result]) -> int:
    """0 only when every prompt produced its images."""
    return 0 if results and all(r.done for r in results.values()) else 1


def log_result(result: Result) -> None:
    """The one line per prompt of both modes: '<worker>: job 3 done in 4.2 s -> <files>'."""
    state = "done" if result.done else f"FAILED: {result.error or 'no image saved'}"
    log.info("%s: job %d %s in %.1f s -> %s", result.worker, result.job.index, state, result.seconds,
             ", ".join(result.files))
