"""Batch client: prompt files and workflow filling (no server needed)."""
import json

import pytest

from batch_client.jobs import Job, fill, find_nodes, read_prompts

WORKFLOW = {
    "1": {"class_type": "PixArtT5Loader", "inputs": {"t5_name": "t5.safetensors"}},
    "2": {"class_type": "PixArtTextEncode", "inputs": {"clip": ["1", 0], "text": "placeholder"}},
    "3": {"class_type": "PixArtTextEncode", "inputs": {"clip": ["1", 0], "text": ""}},
    "4": {"class_type": "PixArtKVSampler", "inputs": {"positive": ["2", 0], "negative": ["3", 0], "seed": 0}},
    "5": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "x"}},
}


def test_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n# comment\na dog\n")
    assert [(j.prompt, j.seed) for j in read_prompts(str(tmp_path / "p.txt"), 10)] == [("a cat", 10), ("a dog", 11)]
    (tmp_path / "p.csv").write_text('prompt,negative,seed\n"a cat, on a mat",blurry,7\na dog,,\n')
    jobs = read_prompts(str(tmp_path / "p.csv"))
    assert [(j.prompt, j.negative, j.seed) for j in jobs] == [("a cat, on a mat", "blurry", 7), ("a dog", None, 1)]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a fox", "seed": 3, "name": "fox"}) + "\n")
    assert read_prompts(str(tmp_path / "p.jsonl"))[0].name == "fox"


@pytest.mark.parametrize("name,content,fragment", [("bad.csv", "text\nx\n", "'prompt' column"),
                                                   ("bad.jsonl", "{nope\n", "not valid JSON"),
                                                   ("bad.jsonl", '{"seed": 1}\n', "string 'prompt'"),
                                                   ("empty.txt", "\n# only comments\n", "no prompts")])
def test_bad_prompt_files(tmp_path, name, content, fragment):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=fragment):
        read_prompts(str(tmp_path / name))


def test_fill_finds_prompt_negative_and_seed():
    nodes = find_nodes(WORKFLOW)
    assert nodes == ("2", "3", "4")
    graph = fill(WORKFLOW, Job(0, "a red fox", 42, negative="dark"), *nodes, prefix="batch_0000")
    assert graph["2"]["inputs"]["text"] == "a red fox" and graph["3"]["inputs"]["text"] == "dark"
    assert graph["4"]["inputs"]["seed"] == 42 and graph["5"]["inputs"]["filename_prefix"] == "batch_0000"
    assert WORKFLOW["2"]["inputs"]["text"] == "placeholder"  # the template is not modified


def test_workflow_without_a_sampler_is_refused():
    with pytest.raises(ValueError, match="exactly one sampler"):
        find_nodes({"1": {"class_type": "SaveImage", "inputs": {}}})
