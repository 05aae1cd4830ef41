"""A small Jupyter-over-WebSocket client for tests: both framings of jupyter_server's kernel
channels (legacy JSON + binary buffers, and ``v1.kernel.websocket.jupyter.org``).

The framing functions are jupyter_server's own, so these tests check our gateway against the
encoding a real Jupyter front end uses.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import websockets
from jupyter_server.services.kernels.connection.base import (
    deserialize_binary_message,
    deserialize_msg_from_ws_v1,
    serialize_binary_message,
    serialize_msg_to_ws_v1,
)

V1 = "v1.kernel.websocket.jupyter.org"


@dataclass
class Reply:
    reply: dict[str, Any]
    outputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        return "".join(
            m["content"]["text"]
            for m in self.outputs
            if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
        )

    @property
    def stderr(self) -> str:
        return "".join(
            m["content"]["text"]
            for m in self.outputs
            if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"
        )


class KernelSocket:
    def __init__(self, ws: Any, protocol: str, session: str) -> None:
        self.ws = ws
        self.protocol = protocol
        self.session = session
        self.inbox: list[dict[str, Any]] = []

    @classmethod
    async def open(
        cls, base_url: str, token: str, kernel_id: str, protocol: str = "legacy",
        open_timeout: float = 10, ping_timeout: float = 20,
    ) -> KernelSocket:  # fmt: skip
        """``open_timeout``: the handshake's (the gateway answers it once the kernel replied to
        its first kernel_info request: a loaded host needs longer); ``ping_timeout``: how long
        a keepalive ping may go unanswered (jupyter_server reads no frame, pings included,
        while it is still nudging a slow kernel)."""
        session = uuid.uuid4().hex
        url = (
            base_url.replace("http", "ws", 1)
            + f"/api/kernels/{kernel_id}/channels?session_id={session}"
        )
        ws = await websockets.connect(
            url,
            subprotocols=[V1] if protocol == "v1" else None,  # type: ignore[list-item]
            additional_headers={"Authorization": f"token {token}"},
            max_size=None,
            open_timeout=open_timeout,
            ping_timeout=ping_timeout,
        )
        if protocol == "v1":
            assert ws.subprotocol == V1
        return cls(ws, protocol, session)

    async def close(self) -> None:
        await self.ws.close()

    def message(self, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        return {
            "header": {
                "msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": "test",
                "session": self.session, "date": datetime.datetime.now(datetime.UTC).isoformat(),
                "version": "5.3",
            },
            "parent_header": {}, "metadata": {}, "content": content,
        }  # fmt: skip

    async def send(
        self, channel: str, msg_type: str, content: dict[str, Any], buffers: list[bytes] = ()
    ) -> str:  # type: ignore[assignment]
        msg = self.message(msg_type, content)
        if self.protocol == "v1":
            parts = [
                json.dumps(msg[k]).encode()
                for k in ("header", "parent_header", "metadata", "content")
            ]
            await self.ws.send(serialize_msg_to_ws_v1([*parts, *buffers], channel))
        elif buffers:
            await self.ws.send(
                serialize_binary_message(msg | {"channel": channel, "buffers": list(buffers)})
            )
        else:
            await self.ws.send(json.dumps(msg | {"channel": channel}))
        return str(msg["header"]["msg_id"])

    async def recv(self, timeout: float = 60) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        if self.protocol == "v1":
            channel, parts = deserialize_msg_from_ws_v1(raw)
            header, parent, metadata, content = (json.loads(p) for p in parts[:4])
            msg = {
                "header": header,
                "parent_header": parent,
                "metadata": metadata,
                "content": content,
                "buffers": parts[4:],
            }
        elif isinstance(raw, bytes):
            msg = deserialize_binary_message(raw)
            channel = msg["channel"]
        else:
            msg = json.loads(raw)
            channel = msg["channel"]
            msg.setdefault("buffers", [])
        msg["channel"] = channel
        msg["msg_type"] = msg["header"]["msg_type"]
        return msg

    async def wait_for(self, predicate: Any, timeout: float = 60) -> dict[str, Any]:
        """The first message (already received or next) that satisfies ``predicate``."""
        for msg in self.inbox:
            if predicate(msg):
                self.inbox.remove(msg)
                return msg
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            msg = await self.recv(max(0.1, deadline - asyncio.get_running_loop().time()))
            if predicate(msg):
                return msg
            self.inbox.append(msg)

    async def start_execute(self, code: str) -> str:
        content = {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        }
        return await self.send("shell", "execute_request", content)

    async def finish(self, msg_id: str, timeout: float = 60) -> Reply:
        """The reply and outputs of an execute request, up to its idle status."""
        outputs: list[dict[str, Any]] = []
        reply = None
        idle = False
        deadline = asyncio.get_running_loop().time() + timeout
        while reply is None or not idle:
            mine = [m for m in self.inbox if m["parent_header"].get("msg_id") == msg_id]
            if mine:
                msg = mine[0]
                self.inbox.remove(msg)
            else:
                msg = await self.recv(max(0.1, deadline - asyncio.get_running_loop().time()))
                if msg["parent_header"].get("msg_id") != msg_id:
                    self.inbox.append(msg)
                    continue
            if msg["channel"] == "shell":
                reply = msg
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
            elif msg["channel"] == "iopub" and msg["msg_type"] not in ("status", "execute_input"):
                outputs.append(msg)
        return Reply(reply["content"], outputs)

    async def execute(self, code: str, timeout: float = 60) -> Reply:
        return await self.finish(await self.start_execute(code), timeout)


def printed_json(url: str, token: str, kernel_id: str, code: str, timeout: float = 120) -> Any:
    """Run ``code`` in the kernel (it prints one JSON value last) and return that value."""

    async def go() -> Any:
        ws = await KernelSocket.open(url, token, kernel_id, "v1")
        try:
            reply = await ws.execute(code, timeout=timeout)
            assert reply.reply["status"] == "ok", (reply.reply, reply.stderr)
            return json.loads(reply.stdout.strip().splitlines()[-1])
        finally:
            await ws.close()

    return asyncio.run(go())


def printed(url: str, token: str, kernel_id: str, code: str, timeout: float = 60) -> str:
    """Run ``code`` in the kernel and return what it printed on stdout."""

    async def go() -> str:
        ws = await KernelSocket.open(url, token, kernel_id)
        try:
            return (await ws.execute(code, timeout=timeout)).stdout
        finally:
            await ws.close()

    return asyncio.run(go())
