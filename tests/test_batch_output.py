"""Batch client: image names, PNG metadata, the output folder and manifest, the summary (no server needed)."""
import io
import json
import os

import pytest
from PIL import Image, PngImagePlugin

from batch_client.jobs import Job
from batch_client.output import Output, image_name, tagged_png
from batch_client.report import Result, exit_status, summary


def comfy_png(text: dict) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def test_names_come_from_index_slug_and_seed():
    assert image_name(Job(7, "A red Fox, at night!", 1007), 0) == "0007-a-red-fox-at-night-1007-0.png"
    assert image_name(Job(7, "ignored", 5, name="Fox"), 2) == "0007-fox-5-2.png"
    assert image_name(Job(0, "!!!", 1), 0) == "0000-image-1-0.png"


def test_tagged_png_keeps_comfyui_metadata_and_adds_the_prompt():
    tagged = Image.open(io.BytesIO(tagged_png(comfy_png({"prompt": '{"1": {}}'}), Job(0, "a fox", 42, negative="dark"))))
    assert tagged.text == {"prompt": '{"1": {}}', "pixart_prompt": "a fox", "pixart_negative": "dark", "pixart_seed": "42"}
    assert tagged.getpixel((0, 0)) == (200, 10, 10)


def test_saving_twice_writes_the_same_files_once(tmp_path):
    output = Output(str(tmp_path / "out"))
    job = Job(1, "a fox", 9)
    first = output.save_images(job, [comfy_png({}), comfy_png({})])
    second = output.save_images(job, [comfy_png({})])  # a retried prompt overwrites its own files
    assert first == [str(tmp_path / "out" / "0001-a-fox-9-0.png"), str(tmp_path / "out" / "0001-a-fox-9-1.png")]
    assert second == first[:1] and sorted(os.listdir(tmp_path / "out")) == ["0001-a-fox-9-0.png", "0001-a-fox-9-1.png"]


def test_manifest_lists_every_prompt_once_in_index_order(tmp_path):
    output = Output(str(tmp_path))
    jobs = [Job(0, "a fox", 5), Job(1, "a cat", 6, negative="dark")]
    files = output.save_images(jobs[1], [comfy_png({})])
    results = {1: Result(jobs[1], "w1", files, seconds=2.5, finished_at=1700000000.1234),
               0: Result(jobs[0], "w2", error="not run: no worker could start")}
    path = output.write_manifest(results)
    lines = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert lines == [
        {"index": 0, "prompt": "a fox", "negative": None, "seed": 5, "file": None, "files": [], "worker": "w2",
         "seconds": 0.0, "finished_at": None, "error": "not run: no worker could start"},
        {"index": 1, "prompt": "a cat", "negative": "dark", "seed": 6, "file": "0001-a-cat-6-0.png",
         "files": ["0001-a-cat-6-0.png"], "worker": "w1", "seconds": 2.5, "finished_at": 1700000000.123, "error": None}]


def test_output_to_a_pyarrow_uri(tmp_path):
    pytest.importorskip("pyarrow", reason="writing to a URI needs pyarrow (requirements-ray.txt)")
    output = Output(f"file://{tmp_path}/bucket/run")
    path = output.save_images(Job(2, "a fox", 3), [comfy_png({})])[0]
    assert path == f"file://{tmp_path}/bucket/run/0002-a-fox-3-0.png"
    assert Image.open(tmp_path / "bucket" / "run" / "0002-a-fox-3-0.png").text["pixart_seed"] == "3"


def test_summary_and_exit_status():
    done = Result(Job(0, "a fox", 1), "http://a", ["x.png"], seconds=1.0)
    no_image = Result(Job(1, "a cat", 2), "http://a")
    failed = Result(Job(2, "a dog", 3), "http://b", error="KSampler: out of memory")
    text = summary({0: done, 1: no_image, 2: failed}, 12.0)
    assert text.splitlines() == ["1 of 3 prompts done, 2 failed, 12.0 s", "  http://a: 1 prompts",
                                 "  FAILED job 1 ('a cat'): no image saved",
                                 "  FAILED job 2 ('a dog'): KSampler: out of memory"]
    assert exit_status({0: done}) == 0 and exit_status({0: done, 2: failed}) == 1 and exit_status({}) == 1
