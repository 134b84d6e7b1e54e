"""Host tier: the batch client's Ray mode on a local Ray, each worker actor owning a real ComfyUI (--cpu, tiny models).

Skipped, with the reason printed, without ComfyUI (COMFYUI_PATH) or without Ray Data (requirements-ray.txt)."""
import json
import os
import re
import signal
import time
import urllib.request

import pytest
from PIL import Image

from bench.fixtures.batch_runs import RayHead, RayTemp, run_client
from bench.fixtures.comfy_server import ComfyServer
from bench.fixtures.graphs import tiny_workflow
from bench.fixtures.models_folder import write_models_folder
from bench.fixtures.pack import ROOT
from host.comfy_host import require_comfyui
from host.ray_fixtures import require_ray

COMFYUI = require_comfyui()
require_ray()

PROMPTS = ["a red dog", "a blue cat", "an astronaut riding a horse", "a city at night", "an oil painting of the moon",
           "a small horse in space", "a big red cat on the moon", "a photo of a city with a horse"]
WORKER_LINE = re.compile(r"^(http://127\.0\.0\.1:(\d+)) on \S+: job (\d+) (done|FAILED)")


@pytest.fixture(scope="module")
def comfy_base(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("ray_comfy_base"))
    write_models_folder(base)
    return base


@pytest.fixture
def batch(tmp_path, comfy_base):
    """Workflow, prompts and a short Ray temp folder; args(...) gives the CLI's arguments for a local Ray run."""
    (tmp_path / "workflow.json").write_text(json.dumps(tiny_workflow(steps=10)))
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    ray_temp = RayTemp()

    def args(*extra, workers=2, out="images", prompts="prompts.txt"):
        args.tmpdir = ray_temp.tmp
        return ["--workflow", str(tmp_path / "workflow.json"), "--prompts", str(tmp_path / prompts),
                "--out", str(tmp_path / out), "--seed", "100", "--ray", "--comfyui", COMFYUI,
                f"--comfy-arg=--base-directory={comfy_base}", "--workers", str(workers), "--ray-temp-dir",
                ray_temp.path, "--no-dashboard", *extra]

    yield args
    ray_temp.remove()


def worker_lines(lines):
    return [match.groups() for line in lines if (match := WORKER_LINE.match(line))]


def check_images_and_manifest(out, prompts=PROMPTS, seed=100):
    """One image per prompt with its prompt and seed in the PNG, and a manifest listing each prompt exactly once."""
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(entry["index"] for entry in manifest) == list(range(len(prompts))), manifest
    images = sorted(name for name in os.listdir(out) if name.endswith(".png"))
    assert len(images) == len(prompts), images
    for entry in manifest:
        assert entry["error"] is None and entry["prompt"] == prompts[entry["index"]], entry
        assert entry["seed"] == seed + entry["index"] and entry["seconds"] > 0, entry
        image = Image.open(out / entry["file"])
        assert image.text["pixart_prompt"] == prompts[entry["index"]], entry
        assert image.text["pixart_seed"] == str(seed + entry["index"]), entry
        assert "prompt" in image.text  # ComfyUI's own workflow metadata is kept
    return manifest


def test_eight_prompts_over_two_ray_workers(batch, tmp_path):
    started = time.time()
    status, lines = run_client(batch(), tmpdir=batch.tmpdir)
    output = "\n".join(lines)
    print(f"\n{time.time() - started:.1f} s\n" + "\n".join(lines[-3:]))
    assert status == 0, output
    assert "8 of 8 prompts done, 0 failed" in output, output
    assert output.count("ready in") == 2, output  # each worker started its own ComfyUI, once
    manifest = check_images_and_manifest(tmp_path / "images")
    workers = {entry["worker"] for entry in manifest}
    assert len(workers) == 2, workers  # both workers ran prompts
    assert sorted(int(job) for _, _, job, _ in worker_lines(lines)) == list(range(8))  # one log line per prompt


def _comfyui_pids(started_with: str = "") -> dict[int, str]:
    """pid -> port of every ComfyUI (main.py --port N) running on this machine, or of those whose command line holds
    `started_with` (e.g. this test's --base-directory: other runs on the machine are not ours to touch)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                args = fh.read().split(b"\0")
        except OSError:
            continue
        if b"main.py" in args and b"--port" in args and started_with.encode() in b"\0".join(args):
            found[int(pid)] = args[args.index(b"--port") + 1].decode()
    return found


def _comfyui_pid(port: str) -> int | None:
    return next((pid for pid, found in _comfyui_pids().items() if found == port), None)


def _running(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/queue", timeout=5) as response:
            return bool(json.loads(response.read())["queue_running"])
    except OSError:
        return False


def test_a_worker_whose_comfyui_dies_is_restarted_and_its_prompt_runs_again(batch, tmp_path):
    killed = {}

    def kill_after_first_prompt(line):
        match = WORKER_LINE.match(line)
        if killed or not match:
            return
        url, port, _, _ = match.groups()
        deadline = time.time() + 20
        while time.time() < deadline and not _running(url):  # wait until it is in the middle of its next prompt
            time.sleep(0.05)
        killed["url"], killed["busy"], killed["pid"] = url, _running(url), _comfyui_pid(port)
        os.kill(killed["pid"], signal.SIGKILL)

    started = time.time()
    status, lines = run_client(batch(), on_line=kill_after_first_prompt, tmpdir=batch.tmpdir)
    output = "\n".join(lines)
    print(f"\n{time.time() - started:.1f} s; killed ComfyUI {killed}\n" + "\n".join(lines[-4:]))
    assert killed.get("pid") and killed["busy"], (killed, output)
    assert status == 0, output
    assert "8 of 8 prompts done, 0 failed" in output, output
    assert re.search(rf"worker {re.escape(killed['url'])} on \S+: ComfyUI exited during job \d+", output), output
    lost = int(re.search(rf"{re.escape(killed['url'])} on \S+: ComfyUI exited during job (\d+)", output).group(1))
    manifest = check_images_and_manifest(tmp_path / "images")
    assert manifest[lost]["worker"] and not manifest[lost]["worker"].startswith(killed["url"] + " "), manifest[lost]
    assert output.count("ready in") == 3, output  # Ray restarted the worker: a third ComfyUI started
    done = [int(job) for _, _, job, state in worker_lines(lines) if state == "done"]
    assert sorted(done) == list(range(8)), done  # each prompt delivered once


def _alive(pid: int) -> bool:
    """Running or stopped, not a zombie and not gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_hung_comfyui_is_replaced_and_its_prompt_runs_again(batch, tmp_path):
    """SIGSTOP (alive, never answers) mid-prompt: the worker hears nothing (--job-timeout) and misses the websocket's
    heartbeat, ends the stopped ComfyUI and exits; Ray restarts it and the prompt runs again."""
    stopped = {}

    def stop_after_first_prompt(line):
        match = WORKER_LINE.match(line)
        if stopped or not match:
            return
        url, port, _, _ = match.groups()
        deadline = time.time() + 20
        while time.time() < deadline and not _running(url):
            time.sleep(0.05)
        stopped["url"], stopped["busy"], stopped["pid"] = url, _running(url), _comfyui_pid(port)
        os.kill(stopped["pid"], signal.SIGSTOP)

    started = time.time()
    status, lines = run_client(batch("--job-timeout", "15"), on_line=stop_after_first_prompt, tmpdir=batch.tmpdir)
    output = "\n".join(lines)
    print(f"\n{time.time() - started:.1f} s, exit status {status}; stopped ComfyUI {stopped}\n" + "\n".join(lines[-4:]))
    assert stopped.get("pid") and stopped["busy"], (stopped, output)
    assert status == 0 and "8 of 8 prompts done, 0 failed" in output, output
    assert re.search(rf"worker {re.escape(stopped['url'])} on \S+: ComfyUI stopped answering during job \d+", output), output
    assert output.count("ready in") == 3, output
    check_images_and_manifest(tmp_path / "images")
    assert not _alive(stopped["pid"]), "the hung ComfyUI was left behind"


def test_a_prompt_whose_retries_run_out_is_reported_and_the_rest_run(batch, tmp_path, comfy_base):
    """Every ComfyUI that runs job 3 is killed: Ray restarts the worker and retries it --retries times, then the
    prompt is reported failed; the other seven are delivered; exit status 1."""
    import threading

    kills, done = [], threading.Event()

    def kill_whoever_runs_job_3():
        while not done.is_set():
            for pid, port in _comfyui_pids(started_with=comfy_base).items():
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/queue", timeout=2) as response:
                        running = json.loads(response.read())["queue_running"]
                except OSError:
                    continue
                if any("batch_0003" in json.dumps(item[2]) for item in running):
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
            time.sleep(0.1)

    watcher = threading.Thread(target=kill_whoever_runs_job_3, daemon=True)
    watcher.start()
    try:
        status, lines = run_client(batch("--retries", "1"), tmpdir=batch.tmpdir)
    finally:
        done.set()
        watcher.join(timeout=10)
    output = "\n".join(lines)
    print(f"\nexit status {status}; job 3 killed {len(kills)} times\n" + "\n".join(lines[-4:]))
    assert status == 1 and "7 of 8 prompts done, 1 failed" in output, output
    assert len(kills) == 2, kills  # the first run and its one retry
    manifest = {entry["index"]: entry for entry in
                (json.loads(line) for line in (tmp_path / "images" / "manifest.jsonl").read_text().splitlines())}
    assert "no result" in manifest[3]["error"] and "--retries 1" in manifest[3]["error"], manifest[3]
    assert all(manifest[index]["error"] is None for index in manifest if index != 3), manifest


def test_a_prompt_comfyui_refuses_is_failed_once_not_retried(batch, tmp_path):
    """A seed below 0 fails ComfyUI's validation: the prompt is reported failed with ComfyUI's reason, once, and no
    worker is restarted for it (it would fail the same way anywhere)."""
    rows = [{"prompt": text, **({"seed": -1} if index == 2 else {})} for index, text in enumerate(PROMPTS)]
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    status, lines = run_client(batch(prompts="prompts.jsonl"), tmpdir=batch.tmpdir)
    output = "\n".join(lines)
    print(f"\nexit status {status}\n" + "\n".join(lines[-4:]))
    assert status == 1 and "7 of 8 prompts done, 1 failed" in output, output
    failed = [line for line in lines if re.search(r"job 2 FAILED", line)]
    assert len(failed) == 1 and "workflow refused" in failed[0], failed
    assert output.count("ready in") == 2, output  # no worker was restarted for it


def test_a_slow_healthy_prompt_is_not_taken_for_dead(batch, tmp_path):
    """--job-timeout measures silence, not duration: prompts that take several times the timeout but report
    progress every step run through, on the first try, with no restart."""
    (tmp_path / "workflow.json").write_text(json.dumps(tiny_workflow(steps=6000)))
    (tmp_path / "prompts4.txt").write_text("\n".join(PROMPTS[:4]) + "\n")
    started = time.time()
    status, lines = run_client(batch("--job-timeout", "10", prompts="prompts4.txt"), tmpdir=batch.tmpdir)
    output = "\n".join(lines)
    manifest = [json.loads(line) for line in (tmp_path / "images" / "manifest.jsonl").read_text().splitlines()]
    seconds = [entry["seconds"] for entry in manifest]
    print(f"\n{time.time() - started:.1f} s, exit status {status}; seconds per prompt {seconds}\n" + "\n".join(lines[-2:]))
    assert status == 0 and "4 of 4 prompts done, 0 failed" in output, output
    assert max(seconds) > 10 * 2, seconds  # well past the timeout
    assert output.count("ready in") == 2 and "stopped answering" not in output, output


def test_every_worker_broken_ends_with_a_summary_and_status_1(batch, tmp_path):
    started = time.time()
    status, lines = run_client(batch("--comfy-arg=--no-such-flag"), tmpdir=batch.tmpdir)
    output = "\n".join(lines)
    print(f"\n{time.time() - started:.1f} s\n" + "\n".join(lines[-3:]))
    assert status == 1, output
    assert "0 of 8 prompts done, 8 failed" in output, output
    failed = [line for line in lines if line.strip().startswith("FAILED job")]
    assert len(failed) == 8, output
    assert all("exited during startup" in line and "--no-such-flag" in line for line in failed), failed
    manifest = [json.loads(line) for line in (tmp_path / "images" / "manifest.jsonl").read_text().splitlines()]
    assert [entry["index"] for entry in manifest] == list(range(8)) and all(entry["error"] for entry in manifest)
    assert not [name for name in os.listdir(tmp_path / "images") if name.endswith(".png")]


def test_a_comfyui_without_the_workflows_nodes_stops_the_run_with_the_reason(batch, tmp_path):
    workflow = tiny_workflow(steps=10)
    workflow["upscale"] = {"class_type": "NoSuchUpscaler", "inputs": {"image": ["decode", 0]}}
    (tmp_path / "workflow.json").write_text(json.dumps(workflow))
    status, lines = run_client(batch(workers=1), tmpdir=batch.tmpdir)
    output = "\n".join(lines)
    print("\n" + "\n".join(lines[-2:]))
    assert status == 1 and "0 of 8 prompts done, 8 failed" in output, output
    failed = [line for line in lines if line.strip().startswith("FAILED job")]
    assert len(failed) == 8 and all("does not know the workflow's nodes NoSuchUpscaler" in line for line in failed), failed


def test_ray_workers_attach_to_running_servers(server, tmp_path):
    """--ray --server: two workers attach to two running servers (one per worker) instead of starting ComfyUI."""
    second = ComfyServer(COMFYUI, server.base)
    ray_temp = RayTemp()
    try:
        (tmp_path / "workflow.json").write_text(json.dumps(tiny_workflow(steps=10)))
        (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS[:4]) + "\n")
        status, lines = run_client(["--workflow", str(tmp_path / "workflow.json"), "--prompts",
                                    str(tmp_path / "prompts.txt"), "--out", str(tmp_path / "images"), "--seed", "100",
                                    "--ray", "--server", server.url, "--server", second.url, "--ray-temp-dir",
                                    ray_temp.path, "--no-dashboard"], tmpdir=ray_temp.tmp)
    finally:
        second.stop()
        ray_temp.remove()
    output = "\n".join(lines)
    print("\n" + "\n".join(lines[-3:]))
    assert status == 0, output
    assert "4 of 4 prompts done" in output and "starting ComfyUI" not in output, output
    manifest = check_images_and_manifest(tmp_path / "images", PROMPTS[:4])
    assert {entry["worker"].split(" on ")[0] for entry in manifest} == {server.url, second.url}, manifest


def test_cluster_address_checks_comfyui_on_its_nodes_then_runs(tmp_path, comfy_base):
    """--ray HOST:PORT against a cluster made by `ray start --head`: --comfyui is checked on the cluster's node
    (one line, before any work), then the prompts run there."""
    from batch_client.comfy_process import free_port

    (tmp_path / "workflow.json").write_text(json.dumps(tiny_workflow(steps=10)))
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS[:2]) + "\n")
    ray_temp = RayTemp()
    head = RayHead(ray_temp, free_port())
    try:
        def client(comfyui, out):
            return run_client(["--workflow", str(tmp_path / "workflow.json"), "--prompts", str(tmp_path / "prompts.txt"),
                               "--out", str(tmp_path / out), "--seed", "100", "--ray", head.address, "--comfyui", comfyui,
                               f"--comfy-arg=--base-directory={comfy_base}", "--workers", "1"],
                              tmpdir=ray_temp.tmp, RAY_AUTH_MODE="token")

        bad_status, bad_lines = client(ROOT, "not-run")
        status, lines = client(COMFYUI, "images")
    finally:
        head.stop()
        ray_temp.remove()
    print(f"\n{head.address}: {bad_lines[-1]}\n" + "\n".join(lines[-2:]))
    assert bad_status == 2 and bad_lines[-1].startswith("python -m batch_client: error: --comfyui "), bad_lines
    assert "is not a ComfyUI checkout" in bad_lines[-1] and " on node " in bad_lines[-1], bad_lines
    assert not any(" job " in line for line in bad_lines)
    output = "\n".join(lines)
    assert status == 0 and "Ray 2" in output and head.address in output, output
    assert "2 of 2 prompts done, 0 failed" in output, output
    check_images_and_manifest(tmp_path / "images", PROMPTS[:2])


@pytest.mark.parametrize("case", ["ui_format", "no_sampler", "no_prompt_node", "unreachable_cluster", "not_comfyui"])
def test_bad_input_is_one_line_before_any_work(case, tmp_path, comfy_base):
    from batch_client.comfy_process import free_port

    workflow, address, comfyui = tiny_workflow(), [], COMFYUI
    if case == "ui_format":
        workflow = json.loads(open(os.path.join(ROOT, "example_workflows", "pixart_sigma_1024_text_to_image.json")).read())
    elif case == "no_sampler":
        del workflow["sample"]
    elif case == "no_prompt_node":
        workflow["sample"]["inputs"]["positive"] = ["dit", 0]
    elif case == "unreachable_cluster":
        address = [f"127.0.0.1:{free_port()}"]
    elif case == "not_comfyui":
        comfyui = ROOT
    (tmp_path / "workflow.json").write_text(json.dumps(workflow))
    (tmp_path / "prompts.txt").write_text("a red dog\n")
    ray_temp = RayTemp()
    started = time.time()
    status, lines = run_client(["--workflow", str(tmp_path / "workflow.json"), "--prompts", str(tmp_path / "prompts.txt"),
                                "--out", str(tmp_path / "images"), "--ray", *address, "--comfyui", comfyui,
                                f"--comfy-arg=--base-directory={comfy_base}", "--ray-temp-dir", ray_temp.path],
                               tmpdir=ray_temp.tmp)
    seconds = time.time() - started
    ray_started = os.listdir(ray_temp.path) != ["tmp"] or bool(os.listdir(ray_temp.tmp))
    ray_temp.remove()
    print(f"\n{case}: {seconds:.1f} s: {lines}")
    assert status == 2 and len(lines) == 1, lines
    named = {"ui_format": "UI-format", "no_sampler": "exactly one sampler", "no_prompt_node": "text-encode node",
             "unreachable_cluster": address[0] if address else "", "not_comfyui": "not a ComfyUI checkout"}[case]
    assert named in lines[0] and ("--workflow" in lines[0] or "--ray" in lines[0] or "--comfyui" in lines[0]), lines
    assert not ray_started and not (tmp_path / "images").exists()  # nothing started, nothing written
