"""A real ComfyUI server for the host tier: --cpu, a temporary --base-directory, this pack symlinked into
custom_nodes, API-mode prompts over HTTP on loopback. COMFYUI_FRONTEND_ROOT, when set, is served as the frontend
(--front-end-root), e.g. a newer comfyui-frontend-package installed with pip --target."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

from host.comfy_host import ROOT


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyServer:
    def __init__(self, comfyui: str, base: str, startup_timeout: float = 180.0):
        self.base = base
        os.makedirs(os.path.join(base, "custom_nodes"), exist_ok=True)
        link = os.path.join(base, "custom_nodes", "comfyui-pixart-sigma-nodes")
        if not os.path.exists(link):
            os.symlink(ROOT, link)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(base, "server.log")
        self._log = open(self.log_path, "w")
        frontend = os.environ.get("COMFYUI_FRONTEND_ROOT")  # e.g. comfyui-frontend-package 1.58.1's static folder
        self.process = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--base-directory", base, "--listen", "127.0.0.1", "--port",
             str(self.port), "--database-url", "sqlite:///:memory:", "--disable-auto-launch"]
            + (["--front-end-root", frontend] if frontend else []),
            cwd=comfyui, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + startup_timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited during startup:\n{self.log()[-4000:]}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not start in {startup_timeout:.0f} s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, payload) -> tuple[int, dict | str]:
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as err:
            body, status = err.read().decode(), err.code
        try:
            return status, json.loads(body) if body else {}
        except json.JSONDecodeError:
            return status, body

    def run(self, prompt: dict, timeout: float = 300.0) -> dict:
        """Queue an API-format prompt and wait for its history entry; raises if /prompt refuses it."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
        if status != 200:
            raise AssertionError(f"/prompt refused ({status}): {body}")
        return self.wait(body["prompt_id"], timeout)

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                return history[prompt_id]
            time.sleep(0.25)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout:.0f} s")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()


def error_message(entry: dict) -> str:
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{data.get('node_type')}: {data.get('exception_message')}"
    return ""
