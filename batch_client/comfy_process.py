"""A ComfyUI server that a Ray worker starts and owns: the checkout given on the command line, on 127.0.0.1 and a
free port, this pack in its custom nodes, scratch output/temp folders of its own, and gone when its worker goes."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

log = logging.getLogger("batch_client")

PACK_NAME = "comfyui-pixart-sigma-nodes"
PACK_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OWNED_FLAGS = ("--listen", "--port")  # the worker picks loopback and a free port itself


class ComfyStartError(RuntimeError):
    """The ComfyUI server did not come up; the message has its last log line and where its log is."""


def comfyui_problem(path: str) -> str | None:
    """Why `path` is not a ComfyUI checkout this client can start, or None when it is one."""
    if not os.path.isdir(path):
        return f"{path} is not a folder"
    missing = [name for name in ("main.py", "nodes.py", os.path.join("comfy", "model_management.py"))
               if not os.path.isfile(os.path.join(path, name))]
    if missing:
        return f"{path} is not a ComfyUI checkout (no {', '.join(missing)} there)"
    return None


def is_pack(folder: str) -> bool:
    """Whether the folder holds this node pack (its pyproject names it), under any folder name."""
    try:
        with open(os.path.join(folder, "pyproject.toml"), encoding="utf-8") as fh:
            return f'name = "{PACK_NAME}"' in fh.read() and os.path.isdir(os.path.join(folder, "nodes"))
    except OSError:
        return False


def option_value(args: list[str], flag: str) -> str | None:
    """The value of `--flag VALUE` or `--flag=VALUE` in a ComfyUI argument list."""
    for number, arg in enumerate(args):
        if arg == flag and number + 1 < len(args):
            return args[number + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def has_option(args: list[str], flag: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in args)


def custom_nodes_folder(comfyui: str, comfy_args: list[str]) -> str:
    base = option_value(comfy_args, "--base-directory")
    return os.path.join(os.path.abspath(base) if base else comfyui, "custom_nodes")


def has_pack(custom_nodes: str) -> bool:
    try:
        entries = os.listdir(custom_nodes)
    except OSError:
        return False
    return any(is_pack(os.path.join(custom_nodes, entry)) for entry in entries)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ComfyProcess:
    """Start ComfyUI and wait until it answers; stop() ends it and removes its scratch folder."""

    def __init__(self, comfyui: str, comfy_args: list[str] = (), python: str | None = None, cpu: bool = True,
                 threads: int | None = None, startup_timeout: float = 300.0):
        problem = comfyui_problem(comfyui)
        if problem:
            raise ComfyStartError(f"--comfyui {comfyui}: {problem}.")
        comfy_args = list(comfy_args)
        self.comfyui = comfyui
        self.workdir = tempfile.mkdtemp(prefix="batch-comfyui-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(self.workdir, "comfyui.log")
        command = [python or sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--disable-auto-launch", "--output-directory", os.path.join(self.workdir, "output"),
                   "--temp-directory", os.path.join(self.workdir, "temp")]
        if cpu and not has_option(comfy_args, "--cpu"):
            command.append("--cpu")
        if not has_option(comfy_args, "--database-url") and self._knows("--database-url"):
            command += ["--database-url", "sqlite:///:memory:"]  # workers of one checkout share no database file
        if not has_pack(custom_nodes_folder(comfyui, comfy_args)):
            command += ["--extra-model-paths-config", self._pack_paths_config()]
        command += comfy_args
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)  # torch's CPU threads in ComfyUI
        log.info("starting ComfyUI %s on %s (log: %s)", comfyui, self.url, self.log_path)
        started = time.time()
        with open(self.log_path, "w") as log_file:
            self.process = subprocess.Popen(command, cwd=comfyui, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self._wait_ready(startup_timeout)
        log.info("ComfyUI on %s ready in %.1f s", self.url, time.time() - started)

    def _knows(self, flag: str) -> bool:
        try:
            with open(os.path.join(self.comfyui, "comfy", "cli_args.py"), encoding="utf-8") as fh:
                return f'"{flag}"' in fh.read()
        except OSError:
            return False

    def _pack_paths_config(self) -> str:
        """An extra-model-paths file that adds a custom_nodes folder holding this pack (as shipped to this node)."""
        if not is_pack(PACK_ROOT):
            raise ComfyStartError(f"this pack ({PACK_NAME}) is not in {self.comfyui}'s custom_nodes and this worker "
                                  f"has no copy of it ({PACK_ROOT}); install it in ComfyUI/custom_nodes on every node.")
        folder = os.path.join(self.workdir, "custom_nodes")
        os.makedirs(folder)
        os.symlink(PACK_ROOT, os.path.join(folder, PACK_NAME))
        path = os.path.join(self.workdir, "extra_model_paths.yaml")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(f"batch_client:\n  custom_nodes: {json.dumps(folder)}\n")
        return path

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.process.poll()
            if status is not None:
                self.stop(keep_log=True)
                raise ComfyStartError(f"ComfyUI {self.comfyui} exited during startup with status {status}: "
                                      f"{self.last_log_line()} (log: {self.log_path})")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=5):
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop(keep_log=True)
        raise ComfyStartError(f"ComfyUI {self.comfyui} did not answer on {self.url} within {timeout:.0f} s: "
                              f"{self.last_log_line()}")

    def last_log_line(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as fh:
                lines = [line.strip() for line in fh if line.strip()]
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"

    def exited(self, within: float = 0.0) -> bool:
        """Whether the server process has ended, waiting up to `within` seconds (a killed process closes its
        sockets a moment before it can be reaped)."""
        try:
            self.process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, keep_log: bool = False) -> None:
        """End the server and remove its scratch folder (keep_log: all but its log, for a server that failed)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)  # a stopped (hung) ComfyUI must run to take the SIGTERM
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if keep_log:
            for folder in ("output", "temp"):  # scratch copies of the images already fetched
                shutil.rmtree(os.path.join(self.workdir, folder), ignore_errors=True)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
