"""Where a batch's images and manifest go, and how each image is named and tagged: one implementation for the direct
mode and the Ray mode.

The destination is a local folder or any URI that pyarrow's filesystems reach (s3://, gs://, hdfs://, file://, an
abfs:// or other fsspec-registered scheme where pyarrow knows it). File names come from the prompt's index, name and
seed, so a prompt run twice (a retry after a worker died) writes the same files again instead of new ones.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import re

from .jobs import BadInput, Job
from .report import Result

MANIFEST = "manifest.jsonl"


def image_name(job: Job, number: int) -> str:
    """'0007-a-red-fox-1007-0.png': prompt index, a slug of its name or prompt, its seed, the image's number."""
    slug = re.sub(r"[^a-z0-9]+", "-", (job.name or job.prompt).lower()).strip("-")[:40] or "image"
    return f"{job.index:04d}-{slug}-{job.seed}-{number}.png"


def tagged_png(data: bytes, job: Job) -> bytes:
    """The PNG with pixart_prompt, pixart_negative and pixart_seed added to ComfyUI's own text chunks."""
    from PIL import Image, PngImagePlugin

    image = Image.open(io.BytesIO(data))
    info = PngImagePlugin.PngInfo()
    for key, value in image.info.items():  # keep ComfyUI's own workflow metadata
        if isinstance(value, str):
            info.add_text(key, value)
    info.add_text("pixart_prompt", job.prompt)
    info.add_text("pixart_negative", job.negative or "")
    info.add_text("pixart_seed", str(job.seed))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


class Output:
    """A local folder or a pyarrow filesystem URI; created (or checked) before any prompt runs."""

    def __init__(self, dest: str):
        self.dest = dest.rstrip("/") or dest
        self.filesystem = None
        if "://" in dest:
            try:
                from pyarrow import fs
            except ImportError as err:
                raise BadInput(f"--out {dest}: writing to a URI needs pyarrow (pip install -r requirements-ray.txt, "
                               "or pip install pyarrow).") from err
            try:
                self.filesystem, self.root = fs.FileSystem.from_uri(dest)
                self.filesystem.create_dir(self.root, recursive=True)
            except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError, its IO errors are OSErrors
                raise BadInput(f"--out {dest}: pyarrow cannot write there ({err}).") from err
        else:
            try:
                os.makedirs(dest, exist_ok=True)
            except OSError as err:
                raise BadInput(f"--out {dest}: cannot create the folder ({err.strerror}).") from err

    def path(self, name: str) -> str:
        return posixpath.join(self.dest, name) if self.filesystem is not None else os.path.join(self.dest, name)

    def write(self, name: str, data: bytes) -> str:
        """Write one file whole (a local file appears complete or not at all) and return its path."""
        if self.filesystem is not None:
            with self.filesystem.open_output_stream(posixpath.join(self.root, name)) as stream:
                stream.write(data)
        else:
            partial = os.path.join(self.dest, f".{name}.partial-{os.getpid()}")
            with open(partial, "wb") as fh:
                fh.write(data)
            os.replace(partial, os.path.join(self.dest, name))
        return self.path(name)

    def save_images(self, job: Job, images: list[bytes]) -> list[str]:
        return [self.write(image_name(job, number), tagged_png(data, job)) for number, data in enumerate(images)]

    def write_manifest(self, results: dict[int, Result]) -> str:
        """manifest.jsonl: one line per prompt in index order (prompt index, prompt, negative, seed, file, files,
        worker, seconds, finished_at, error), failed prompts included with their error and no file."""
        lines = []
        for index in sorted(results):
            result = results[index]
            names = [posixpath.basename(path.replace(os.sep, "/")) for path in result.files]
            finished = None if result.finished_at is None else round(result.finished_at, 3)
            lines.append(json.dumps({
                "index": index, "prompt": result.job.prompt, "negative": result.job.negative, "seed": result.job.seed,
                "file": names[0] if names else None, "files": names, "worker": result.worker,
                "seconds": round(result.seconds, 3), "finished_at": finished, "error": result.error}, ensure_ascii=False))
        return self.write(MANIFEST, ("\n".join(lines) + "\n").encode("utf-8"))
