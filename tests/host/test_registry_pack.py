"""Host tier: the registry archive. comfy-cli (`pip install comfy-cli`, with ruff in the same environment: its
`node validate` runs `python -m ruff` for its security check) validates pyproject's [tool.comfy] and packs the
git-tracked files minus .comfyignore. The archive holds the pack and its runtime files only, and, unpacked into
custom_nodes of a fresh ComfyUI base folder, loads and runs the example graph it carries on tiny models.
Skipped, with the reason printed, where comfy-cli is not installed (COMFY_CLI names its executable, else `comfy`
on PATH)."""
import json
import os
import shutil
import subprocess
import zipfile

import pytest

from bench.fixtures.comfy_server import ComfyServer, error_message
from bench.fixtures.models_folder import write_models_folder
from bench.fixtures.pack import ROOT
from host.comfy_host import require_comfyui
from tools.published_models import FILES

COMFYUI = require_comfyui()
COMFY_CLI = os.environ.get("COMFY_CLI") or shutil.which("comfy")
PACK_FOLDER = "comfyui-pixart-sigma-nodes"
LEFT_OUT = ("tests/", "bench/", "tools/", ".ci/", ".github/")
EXAMPLE = "pixart_sigma_1024_text_to_image.json"
TINY = {"text_encoders": "t5-tiny.safetensors", "diffusion_models": "sigma-tiny.safetensors", "vae": "vae-tiny.safetensors"}


def _comfy(*args: str) -> subprocess.CompletedProcess:
    if not COMFY_CLI:
        pytest.skip("registry packaging test skipped: comfy-cli is not installed (python -m pip install comfy-cli ruff, "
                    "or set COMFY_CLI to its executable)")
    return subprocess.run([COMFY_CLI, "--skip-prompt", "--no-enable-telemetry", "node", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def _cli_python() -> str:
    with open(os.path.realpath(COMFY_CLI), encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    return first[2:].strip() if first.startswith("#!") else "python3"


def test_validate_is_clean():
    result = _comfy("validate")
    said = result.stdout + result.stderr  # comfy-cli prints its verdict through rich, to stderr when piped
    print(f"\ncomfy node validate:\n{said}")
    ruff = subprocess.run([_cli_python(), "-m", "ruff", "--version"], capture_output=True, text=True)
    assert ruff.returncode == 0, "comfy-cli's Python has no ruff, so its security check would pass without running"
    assert result.returncode == 0
    assert "All validation checks passed" in said
    assert "Warning" not in said  # e.g. a requires-comfyui the registry would drop


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    folder = tmp_path_factory.mktemp("registry")
    made = os.path.join(ROOT, "node.zip")
    result = _comfy("pack")
    assert result.returncode == 0, result.stdout + result.stderr
    target = str(folder / "node.zip")
    shutil.move(made, target)
    with zipfile.ZipFile(target) as zf:
        names = sorted(zf.namelist())
    print(f"\ncomfy node pack: {len(names)} files\n" + "\n".join(names))
    return target, names


def test_archive_holds_the_runtime_files_only(archive):
    _, names = archive
    assert [n for n in names if n.startswith(LEFT_OUT)] == []
    runtime = {"__init__.py", "pyproject.toml", "requirements.txt", "nodes/extension.py", "pixart/dit.py",
               "web/js/pixart.js"}
    assert runtime <= set(names), runtime - set(names)
    docs = sorted(f for f in os.listdir(os.path.join(ROOT, "web", "docs")))
    examples = sorted(f for f in os.listdir(os.path.join(ROOT, "example_workflows")) if f.endswith(".json"))
    assert {f"web/docs/{d}" for d in docs} <= set(names)
    assert {f"example_workflows/{e}" for e in examples} <= set(names)


def _tiny_example(prompt: dict) -> dict:
    """The example graph on the tiny models: published files swapped for the tiny file of their folder, a small
    latent, few steps."""
    for node in prompt.values():
        inputs = node["inputs"]
        for name, value in list(inputs.items()):
            if isinstance(value, str) and value in FILES:
                inputs[name] = TINY[FILES[value].directory]
        if node["class_type"] == "PixArtEmptyLatent":
            inputs.update(width=128, height=96, binning="off")
        if node["class_type"] == "PixArtKVSampler":
            inputs["steps"] = 3
        if node["class_type"] == "SaveImage":
            inputs["filename_prefix"] = "from_registry_zip"
    return prompt


def test_unpacked_archive_loads_and_runs_an_example(archive, tmp_path):
    path, _ = archive
    base = str(tmp_path / "base")
    write_models_folder(base)
    pack = os.path.join(base, "custom_nodes", PACK_FOLDER)
    with zipfile.ZipFile(path) as zf:
        zf.extractall(pack)
    assert not os.path.islink(pack) and not os.path.exists(os.path.join(pack, "tests"))
    server = ComfyServer(COMFYUI, base)  # finds the unpacked folder in place and links nothing
    try:
        assert not os.path.islink(pack)
        info = server.get("/object_info")
        ours = sorted(n for n, i in info.items() if i.get("python_module") == f"custom_nodes.{PACK_FOLDER}")
        assert "PixArtKVSampler" in ours and "PixArtT5Loader" in ours, ours
        with open(os.path.join(pack, "example_workflows", "api", EXAMPLE), encoding="utf-8") as fh:
            prompt = _tiny_example(json.load(fh))
        entry = server.run(prompt)
        assert entry["status"]["status_str"] == "success", error_message(entry)
        images = [image for output in entry["outputs"].values() for image in output.get("images", [])]
        assert len(images) == 1 and images[0]["filename"].startswith("from_registry_zip")
        saved = os.path.join(base, "output", images[0].get("subfolder", ""), images[0]["filename"])
        print(f"\nunpacked archive: {len(ours)} nodes loaded; {EXAMPLE} ran, saved {os.path.getsize(saved)} bytes")
    finally:
        server.stop()
