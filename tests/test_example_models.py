"""Every example workflow declares the published files its loaders select, in the form ComfyUI's frontend (1.58)
reads to offer downloads: a node's `properties.models` entries {name, url, directory}, a Hugging Face /resolve/ URL
ending with the file's name, a ComfyUI model folder. Iterates over every file in example_workflows/."""
import json
import os
from urllib.parse import urlparse

import pytest

from tools.published_models import FILES, REPOS, declarations, is_model_file, is_model_value

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "example_workflows")
NAMES = sorted(f for f in os.listdir(os.path.join(EXAMPLES, "api")) if f.endswith(".json"))
# Folders ComfyUI's folder_paths knows on both supported hosts (text_encoders and diffusion_models included)
COMFY_FOLDERS = {"checkpoints", "vae", "text_encoders", "diffusion_models", "loras", "controlnet", "upscale_models"}
# The frontend's download rule (missingModelDownload.ts): allow-listed host, and a name with one of these endings
DOWNLOADABLE_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pth", ".pt")


def _load(*parts):
    with open(os.path.join(EXAMPLES, *parts), encoding="utf-8") as fh:
        return json.load(fh)


def test_every_ui_example_has_an_api_copy():
    ui = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".json"))
    assert ui == NAMES and NAMES


@pytest.mark.parametrize("name", NAMES)
def test_api_copy_names_only_published_models(name):
    used = [v for node in _load("api", name).values() for v in node["inputs"].values() if is_model_value(v)]
    assert used, f"{name} selects no model"
    unknown = [v for v in used if v not in FILES and v not in REPOS]
    assert unknown == [], f"{name}: add {unknown} to tools/published_models.py"


@pytest.mark.parametrize("name", NAMES)
def test_ui_example_declares_each_selected_file(name):
    workflow = _load(name)
    declared_anywhere = set()
    for node in workflow["nodes"]:
        values = node.get("widgets_values") or []
        declared = node["properties"].get("models", [])
        assert declared == declarations(values), f"{name} node {node['id']} ({node['type']})"
        declared_anywhere |= {m["name"] for m in declared}
    selected = {v for node in _load("api", name).values() for v in node["inputs"].values() if is_model_file(v)}
    assert declared_anywhere == selected
    print(f"\n{name}: declares {sorted(declared_anywhere)}")


@pytest.mark.parametrize("model", sorted(FILES), ids=str)
def test_declarations_are_downloadable_by_the_frontend(model):
    entry = FILES[model].declaration()
    url = urlparse(entry["url"])
    assert url.scheme == "https" and url.netloc == "huggingface.co"
    assert "/resolve/main/" in url.path and url.path.endswith("/" + entry["name"])
    assert entry["name"].endswith(DOWNLOADABLE_SUFFIXES)
    assert entry["directory"] in COMFY_FOLDERS


def test_readme_names_every_published_model():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    links = [m.url for m in FILES.values()] + [r.page for r in REPOS.values()]
    missing = [link for link in links if link not in readme]
    assert missing == []
