"""Batch client: prompt files and workflow filling (no server needed)."""
import json

import pytest

from batch_client.jobs import BadInput, Job, fill, find_nodes, load_workflow, read_prompts, workflow_nodes

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


def test_bad_seed_names_the_file_and_prompt(tmp_path):
    (tmp_path / "p.csv").write_text("prompt,seed\na cat,1\na dog,lots\n")
    with pytest.raises(BadInput, match=r"p\.csv: prompt 2 has seed 'lots', not an integer"):
        read_prompts(str(tmp_path / "p.csv"))


@pytest.mark.parametrize("content,fragment", [
    ('{"last_node_id": 9, "nodes": [], "links": []}', "UI-format workflow; export it with 'Export \\(API\\)'"),
    ("{nope", "not valid JSON"),
    ('{"1": {"inputs": {}}}', "not an API-format workflow"),
    ("[]", "not an API-format workflow")])
def test_workflow_files_that_are_not_api_format(tmp_path, content, fragment):
    (tmp_path / "w.json").write_text(content)
    with pytest.raises(BadInput, match=f"--workflow .*w\\.json.*{fragment}"):
        load_workflow(str(tmp_path / "w.json"))


def test_workflow_nodes_named_or_found():
    assert workflow_nodes(WORKFLOW, "w.json") == ("2", "3", "4")
    assert workflow_nodes(WORKFLOW, "w.json", prompt_node="3", negative_node="2", seed_node="4") == ("3", "2", "4")
    with pytest.raises(BadInput, match="--prompt-node 9: no such node in --workflow w.json"):
        workflow_nodes(WORKFLOW, "w.json", prompt_node="9", seed_node="4")
    unlinked = {**WORKFLOW, "4": {"class_type": "KSampler", "inputs": {"positive": ["1", 0], "seed": 0}}}
    with pytest.raises(BadInput, match="w.json: the sampler's positive input does not come from a text-encode node"):
        workflow_nodes(unlinked, "w.json")


def test_job_row_round_trip():
    job = Job(3, "a fox", 7, negative=None, name="fox")
    assert Job.from_row(job.row()) == job
