"""One ComfyUI server in API mode: queue a filled workflow, follow it on the server's websocket, fetch the images
it saved. The one implementation of that protocol, used by the direct mode's workers and by the Ray worker actors."""
from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Callable

log = logging.getLogger("batch_client")


class ServerDown(Exception):
    """The server stopped answering; the prompt it had may run elsewhere."""


class PromptFailed(Exception):
    """The server refused or failed the prompt; running it elsewhere would fail the same way."""


class ComfyConnection:
    """An HTTP session and a websocket to one server, for as many prompts as it serves."""

    def __init__(self, session, url: str, client_id: str, ws):
        self.session, self.url, self.client_id, self.ws = session, url, client_id, ws

    HEARTBEAT = 20.0  # seconds between websocket pings: a server that misses a pong (a hung process) is gone

    @classmethod
    async def open(cls, url: str) -> ComfyConnection:
        import aiohttp

        url = url.rstrip("/")
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        client_id = uuid.uuid4().hex
        try:
            ws = await session.ws_connect(re.sub(r"^http", "ws", url) + f"/ws?clientId={client_id}",
                                          heartbeat=cls.HEARTBEAT)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as err:
            await session.close()
            raise ServerDown(f"cannot connect ({err})") from err
        return cls(session, url, client_id, ws)

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()

    async def node_types(self) -> set[str]:
        """The class_types this server knows (its /object_info): core nodes plus every loaded custom node."""
        import aiohttp

        try:
            async with self.session.get(f"{self.url}/object_info") as response:
                return set(await response.json())
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as err:
            raise ServerDown(f"/object_info failed ({err})") from err

    async def run(self, graph: dict, silence: float = 1800.0,
                  on_progress: Callable[[int, int], None] | None = None) -> list[bytes]:
        """Queue the graph, wait for it on the websocket and return the PNG bytes of every output image.

        silence: seconds the server may send nothing (no progress, no node start, no status) before it is taken for
        hung; a slow prompt that keeps reporting runs as long as it needs. A server whose process stops answering
        misses the websocket heartbeat and is taken for gone within about 1.5 heartbeats, whatever `silence` is.
        Raises PromptFailed when the server refuses or fails the prompt, ServerDown when the server goes away."""
        import aiohttp

        try:
            return await self._run(graph, silence, on_progress)
        except asyncio.TimeoutError as err:
            raise ServerDown(f"no word from the server for {silence:g} s (--job-timeout)") from err
        except (aiohttp.ClientError, OSError) as err:
            raise ServerDown(f"{type(err).__name__}: {err}") from err

    async def _run(self, graph, silence, on_progress) -> list[bytes]:
        import aiohttp

        async with self.session.post(f"{self.url}/prompt", json={"prompt": graph, "client_id": self.client_id}) as response:
            body = await response.json(content_type=None)
            if response.status >= 500:
                raise ServerDown(f"HTTP {response.status}")
            if response.status != 200:
                raise PromptFailed(f"workflow refused: {json.dumps(body)[:500]}")
        prompt_id = body["prompt_id"]
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), timeout=silence)  # any message resets the wait
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                raise ServerDown("websocket closed")
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            payload = data.get("data", {})
            if payload.get("prompt_id") != prompt_id:
                continue
            if data["type"] == "progress" and on_progress is not None:
                on_progress(payload.get("value"), payload.get("max"))
            elif data["type"] == "execution_error":
                raise PromptFailed(f"{payload.get('node_type')}: {payload.get('exception_message')}")
            elif data["type"] == "execution_interrupted":
                raise PromptFailed("interrupted on the server")
            elif data["type"] == "execution_success":
                break
        return await self._output_images(prompt_id)

    async def _output_images(self, prompt_id: str) -> list[bytes]:
        history = None
        for _ in range(150):  # the server reports success just before it files the history entry
            async with self.session.get(f"{self.url}/history/{prompt_id}") as response:
                history = (await response.json()).get(prompt_id)
            if history is not None:
                break
            await asyncio.sleep(0.2)
        if history is None:
            raise ServerDown(f"no history for prompt {prompt_id}")
        images = []
        for node_output in history.get("outputs", {}).values():
            for image in node_output.get("images", []):
                if image.get("type") != "output":
                    continue
                params = {"filename": image["filename"], "subfolder": image.get("subfolder", ""), "type": "output"}
                async with self.session.get(f"{self.url}/view", params=params) as response:
                    if response.status != 200:
                        raise ServerDown(f"/view answered {response.status}")
                    images.append(await response.read())
        return images
