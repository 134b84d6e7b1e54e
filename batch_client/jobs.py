"""Batch jobs for the API-mode client: prompts from text/CSV/JSONL files, filled into an API-format workflow.

Shared by the direct multi-server mode and the Ray mode: one reader of prompt files, one loader of workflows,
one finder of the prompt/negative/sampler nodes and one filler."""
from __future__ import annotations

import copy
import csv
import json
import os
from dataclasses import dataclass

TEXT_NODES = ("PixArtTextEncode", "CLIPTextEncode")
SAMPLER_NODES = ("PixArtKVSampler", "KSampler", "KSamplerAdvanced")


class BadInput(ValueError):
    """An input that cannot work, found before any prompt runs; the message names the input and the fix."""


@dataclass
class Job:
    index: int
    prompt: str
    seed: int
    negative: str | None = None
    name: str | None = None
    attempts: int = 0

    def row(self) -> dict:
        """The job as a table row (a Ray Data record); Job.from_row reads it back."""
        return {"index": self.index, "prompt": self.prompt, "seed": self.seed, "negative": self.negative,
                "name": self.name}

    @classmethod
    def from_row(cls, row) -> Job:
        return cls(index=int(row["index"]), prompt=str(row["prompt"]), seed=int(row["seed"]),
                   negative=row["negative"] or None, name=row["name"] or None)


def read_prompts(path: str, base_seed: int = 0) -> list[Job]:
    """.txt: one prompt a line (blank lines and '#' comments skipped); .csv: a 'prompt' column and optional
    'negative', 'seed', 'name'; .jsonl: one object a line with the same fields. Seeds default to base_seed + index."""
    ext = os.path.splitext(path)[1].lower()
    rows: list[dict] = []
    try:
        fh = open(path, encoding="utf-8", newline="")
    except OSError as err:
        raise BadInput(f"--prompts {path}: cannot read it ({err.strerror}).") from err
    with fh:
        if ext == ".csv":
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or "prompt" not in reader.fieldnames:
                raise BadInput(f"{path}: a CSV prompt file needs a 'prompt' column header.")
            rows = list(reader)
        elif ext == ".jsonl":
            for number, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise BadInput(f"{path}:{number}: not valid JSON ({err.msg}).") from err
                    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                        raise BadInput(f"{path}:{number}: each line must be an object with a string 'prompt'.")
                    rows.append(row)
        else:
            rows = [{"prompt": line.strip()} for line in fh if line.strip() and not line.lstrip().startswith("#")]
    jobs = []
    for index, row in enumerate(rows):
        seed = row.get("seed")
        try:
            seed = int(seed) if seed not in (None, "") else base_seed + index
        except ValueError as err:
            raise BadInput(f"{path}: prompt {index + 1} has seed {seed!r}, not an integer.") from err
        jobs.append(Job(index=index, prompt=str(row["prompt"]), seed=seed, negative=row.get("negative") or None,
                        name=row.get("name") or None))
    if not jobs:
        raise BadInput(f"{path}: no prompts found.")
    return jobs


def load_workflow(path: str) -> dict:
    """An API-format workflow (ComfyUI's 'Export (API)'): {node id: {"class_type", "inputs"}}."""
    try:
        with open(path, encoding="utf-8") as fh:
            workflow = json.load(fh)
    except OSError as err:
        raise BadInput(f"--workflow {path}: cannot read it ({err.strerror}).") from err
    except json.JSONDecodeError as err:
        raise BadInput(f"--workflow {path}: not valid JSON (line {err.lineno}: {err.msg}).") from err
    if isinstance(workflow, dict) and "nodes" in workflow and "links" in workflow:
        raise BadInput(f"--workflow {path} is a UI-format workflow; export it with 'Export (API)' in ComfyUI.")
    if not isinstance(workflow, dict) or not workflow or not all(
            isinstance(node, dict) and "class_type" in node and isinstance(node.get("inputs"), dict)
            for node in workflow.values()):
        raise BadInput(f"--workflow {path}: not an API-format workflow (an object of nodes with 'class_type' and "
                       "'inputs'); export it with 'Export (API)' in ComfyUI.")
    return workflow


def workflow_nodes(workflow: dict, path: str, prompt_node: str | None = None, negative_node: str | None = None,
                   seed_node: str | None = None) -> tuple[str, str | None, str]:
    """The (positive, negative, sampler) node ids to fill: named on the command line, or found from the sampler."""
    for flag, node in (("--prompt-node", prompt_node), ("--negative-node", negative_node), ("--seed-node", seed_node)):
        if node is not None and node not in workflow:
            raise BadInput(f"{flag} {node}: no such node in --workflow {path} (its ids: {', '.join(sorted(workflow))}).")
    if prompt_node and seed_node:
        return prompt_node, negative_node, seed_node
    try:
        return find_nodes(workflow)
    except ValueError as err:
        raise BadInput(f"--workflow {path}: {err}") from err


def _source(workflow: dict, link) -> str | None:
    return str(link[0]) if isinstance(link, list) and link else None


def find_nodes(workflow: dict) -> tuple[str, str | None, str]:
    """(positive text node, negative text node or None, sampler node) of an API-format workflow."""
    samplers = [nid for nid, node in workflow.items() if node.get("class_type") in SAMPLER_NODES]
    if len(samplers) != 1:
        raise ValueError(f"the workflow needs exactly one sampler node ({', '.join(SAMPLER_NODES)}); found {len(samplers)}. "
                         "Use --prompt-node and --seed-node to name them.")
    inputs = workflow[samplers[0]]["inputs"]
    positive, negative = _source(workflow, inputs.get("positive")), _source(workflow, inputs.get("negative"))
    if positive is None or workflow.get(positive, {}).get("class_type") not in TEXT_NODES:
        raise ValueError("the sampler's positive input does not come from a text-encode node; use --prompt-node.")
    if negative is not None and workflow.get(negative, {}).get("class_type") not in TEXT_NODES:
        negative = None
    return positive, negative, samplers[0]


def fill(workflow: dict, job: Job, positive: str, negative: str | None, sampler: str, prefix: str) -> dict:
    """A copy of the workflow with this job's prompt, negative, seed and output filename prefix."""
    graph = copy.deepcopy(workflow)
    graph[positive]["inputs"]["text"] = job.prompt
    if negative is not None and job.negative is not None:
        graph[negative]["inputs"]["text"] = job.negative
    seed_key = "noise_seed" if "noise_seed" in graph[sampler]["inputs"] else "seed"
    graph[sampler]["inputs"][seed_key] = job.seed
    for node in graph.values():
        if node.get("class_type") == "SaveImage":
            node["inputs"]["filename_prefix"] = prefix
    return graph
