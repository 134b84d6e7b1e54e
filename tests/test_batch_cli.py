"""Batch client command line: bad input is one line naming the input, exit status 2, before any work starts
(no server, no Ray, no ComfyUI needed), and the parts of the Ray mode that need no cluster."""
import json
import os
import socket
import subprocess
import sys

import pytest

from batch_client.comfy_process import comfyui_problem, custom_nodes_folder, has_pack, is_pack, option_value
from batch_client.ray_worker import servers_for_node

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = {
    "t5": {"class_type": "PixArtT5Loader", "inputs": {"t5_name": "t5.safetensors"}},
    "pos": {"class_type": "PixArtTextEncode", "inputs": {"clip": ["t5", 0], "text": "placeholder"}},
    "sample": {"class_type": "PixArtKVSampler", "inputs": {"positive": ["pos", 0], "seed": 0}},
    "save": {"class_type": "SaveImage", "inputs": {"images": ["sample", 0], "filename_prefix": "x"}},
}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the socket is


def fake_comfyui(folder):
    for name in ("main.py", "nodes.py", os.path.join("comfy", "model_management.py")):
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        open(os.path.join(folder, name), "w").close()
    return str(folder)


CASES = {
    "ui_format": ({"nodes": [], "links": []}, ["--ray", "--comfyui", "COMFY"], "is a UI-format workflow"),
    "no_sampler": ({k: v for k, v in WORKFLOW.items() if k != "sample"}, ["--ray", "--comfyui", "COMFY"],
                   "needs exactly one sampler node"),
    "no_prompt_node": ({**WORKFLOW, "sample": {"class_type": "KSampler", "inputs": {"positive": ["t5", 0]}}},
                       ["--ray", "--comfyui", "COMFY"], "does not come from a text-encode node"),
    "unreachable_cluster": (WORKFLOW, ["--ray", "127.0.0.1:PORT", "--comfyui", "COMFY"],
                            "--ray 127.0.0.1:PORT: no Ray cluster answers there"),
    "not_an_address": (WORKFLOW, ["--ray", "head-node", "--comfyui", "COMFY"], "--ray head-node: not a cluster address"),
    "not_comfyui": (WORKFLOW, ["--ray", "--comfyui", "ROOT"], "--comfyui ROOT: ROOT is not a ComfyUI checkout"),
    "start_and_attach": (WORKFLOW, ["--ray", "--comfyui", "COMFY", "--server", "http://127.0.0.1:8188"],
                         "not both and not neither"),
    "owned_port": (WORKFLOW, ["--ray", "--comfyui", "COMFY", "--comfy-arg=--port=8188"], "--comfy-arg --port"),
    "no_server": (WORKFLOW, [], "--server: give at least one ComfyUI URL"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_naming_it(case, tmp_path):
    workflow, args, expected = CASES[case]
    port = str(closed_port())
    swap = {"COMFY": fake_comfyui(tmp_path / "ComfyUI"), "ROOT": ROOT, "PORT": port}
    args = [next((arg.replace(k, v) for k, v in swap.items() if k in arg), arg) for arg in args]
    expected = expected.replace("PORT", port).replace("ROOT", ROOT)
    (tmp_path / "workflow.json").write_text(json.dumps(workflow))
    (tmp_path / "prompts.txt").write_text("a red fox\n")
    run = subprocess.run([sys.executable, "-m", "batch_client", "--workflow", str(tmp_path / "workflow.json"),
                          "--prompts", str(tmp_path / "prompts.txt"), "--out", str(tmp_path / "out"), *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    assert run.returncode == 2 and len(lines) == 1, lines
    assert expected in lines[0], lines
    assert not (tmp_path / "out").exists()  # nothing written, nothing started


def test_comfyui_checkout_and_pack_detection(tmp_path):
    assert comfyui_problem(str(tmp_path / "missing")) == f"{tmp_path / 'missing'} is not a folder"
    assert comfyui_problem(fake_comfyui(tmp_path / "ComfyUI")) is None
    assert is_pack(ROOT) and not is_pack(str(tmp_path))
    (tmp_path / "custom_nodes").mkdir()
    assert not has_pack(str(tmp_path / "custom_nodes"))
    os.symlink(ROOT, tmp_path / "custom_nodes" / "any-name")
    assert has_pack(str(tmp_path / "custom_nodes"))
    assert custom_nodes_folder("/opt/ComfyUI", ["--base-directory=/data/comfy"]) == "/data/comfy/custom_nodes"
    assert custom_nodes_folder("/opt/ComfyUI", ["--cpu"]) == "/opt/ComfyUI/custom_nodes"
    assert option_value(["--base-directory", "/d", "--cpu"], "--base-directory") == "/d"


def test_servers_for_a_node():
    servers = ["http://127.0.0.1:8188", "10.0.0.5=http://127.0.0.1:8189", "10.0.0.6=http://127.0.0.1:8190",
               "http://127.0.0.1:8191/?token=a=b"]
    assert servers_for_node(servers, "10.0.0.5") == ["http://127.0.0.1:8188", "http://127.0.0.1:8189",
                                                     "http://127.0.0.1:8191/?token=a=b"]
