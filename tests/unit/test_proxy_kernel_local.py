"""The proxy kernel in-process, between a front end on real local ZMQ sockets and a tiny
in-process stand-in for the gateway (its kernel REST route and kernel WebSocket, in the
``v1.kernel.websocket.jupyter.org`` framing), as starlette tests an app: what the front end sees
of held cells, of the remote kernel's status, of its death and restart, and of the proxy's own
traffic."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio
from jupyter_client.connect import write_connection_file
from jupyter_client.session import Session
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from cumulus_jupyter.connection import GatewaySettings
from cumulus_jupyter.kernel import ProxyKernel
from cumulus_jupyter.kernel.link import KernelOptions
from cumulus_jupyter.kernel.sockets import ROUTED
from cumulus_jupyter.protocol.messages import V1, Parts, decode_v1, encode_v1, parse

pytestmark = pytest.mark.unit
KERNEL_ID = "k-local"
TIMEOUT = 10.0


async def within(awaitable: Awaitable[Any], what: str) -> Any:
    try:
        return await asyncio.wait_for(awaitable, TIMEOUT)
    except TimeoutError:
        pytest.fail(f"no {what} within {TIMEOUT} s")


@dataclass
class Gateway:
    """One kernel's REST route and WebSocket: records what the proxy sends, sends as the kernel."""

    received: asyncio.Queue[tuple[str, Parts]] = field(default_factory=asyncio.Queue)
    ws: ServerConnection | None = None
    server: Server | None = None

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        return connection.respond(HTTPStatus.OK, json.dumps({"id": KERNEL_ID, "cumulus": {}}))

    async def handler(self, ws: ServerConnection) -> None:
        self.ws = ws
        async for frame in ws:
            assert isinstance(frame, bytes)
            self.received.put_nowait(decode_v1(frame))

    async def next(self, channel: str = "shell") -> dict[str, Any]:
        """The next message the proxy sent the kernel (on ``channel``)."""
        got, parts = await within(self.received.get(), f"message to the kernel on {channel}")
        assert got == channel
        return parse(parts)

    async def send(
        self, channel: str, msg_type: str, parent: dict[str, Any], **content: Any
    ) -> None:
        header = {
            "msg_id": f"{msg_type}-{id(content)}",
            "msg_type": msg_type,
            "session": "remote",
            "version": "5.3",
        }
        parts = [json.dumps(p, default=str).encode() for p in (header, parent, {}, content)]
        assert self.ws is not None
        await self.ws.send(encode_v1(channel, parts))


class FrontEnd:
    """A Jupyter front end on the proxy's shell and iopub channels."""

    def __init__(self, connection: dict[str, Any], context: zmq.asyncio.Context) -> None:
        self.session = Session(key=connection["key"].encode())
        self.shell = context.socket(zmq.DEALER)
        self.shell.connect(f"tcp://127.0.0.1:{connection['shell_port']}")
        self.iopub = context.socket(zmq.SUB)
        self.iopub.subscribe(b"")
        self.iopub.connect(f"tcp://127.0.0.1:{connection['iopub_port']}")
        self.states: list[str] = []  # the statuses without a parent: the kernel's own news

    def request(self, msg_type: str, **content: Any) -> dict[str, Any]:
        msg = self.session.send(self.shell, msg_type, content)
        assert msg is not None
        return dict(msg["header"])

    def execute(self, code: str) -> dict[str, Any]:
        return self.request("execute_request", code=code, silent=False, store_history=True,
                            user_expressions={}, allow_stdin=False, stop_on_error=True)  # fmt: skip

    async def _recv(self, sock: zmq.asyncio.Socket, what: str) -> dict[str, Any]:
        frames = await within(sock.recv_multipart(), what)
        _, msg = self.session.feed_identities(frames)
        return dict(self.session.deserialize(msg))  # checks the proxy's signature

    async def reply(self) -> dict[str, Any]:
        return await self._recv(self.shell, "shell reply")

    async def iopub_of(self, request: dict[str, Any]) -> list[tuple[str, Any]]:
        """The iopub messages for ``request`` up to its idle: (msg_type, what it says)."""
        seen: list[tuple[str, Any]] = []
        while True:
            msg = await self._recv(self.iopub, f"idle for {request['msg_type']}")
            if msg["msg_type"] == "status" and not msg["parent_header"]:
                self.states.append(msg["content"]["execution_state"])
            if msg["parent_header"].get("msg_id") != request["msg_id"]:
                continue
            content = msg["content"]
            seen.append(
                (
                    msg["msg_type"],
                    content.get("execution_state") or content.get("text") or content.get("ename"),
                )
            )
            if seen[-1] == ("status", "idle"):
                return seen

    async def subscribed(self) -> None:
        """Ask for kernel_info until its iopub arrives: the subscription is up (PUB/SUB drops
        what is published before it)."""
        for _ in range(50):
            request = self.request("kernel_info_request")
            await self.reply()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.iopub.recv_multipart(), 0.2)
                await self.iopub_of(request)  # the rest of it: busy was first
                return
        pytest.fail("the iopub subscription never came up")


@dataclass
class Harness:
    proxy: ProxyKernel
    front: FrontEnd
    gateway: Gateway

    async def connect(self) -> None:
        """The proxy adopts the kernel the sidecar names and relays to it."""
        await within(self.proxy.connect_remote(), "connection to the remote kernel")
        assert self.proxy.failure is None, self.proxy.failure
        assert self.proxy.ready.is_set()


@contextlib.asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[Harness]:
    _, info = write_connection_file(str(tmp_path / "kernel.json"), ip="127.0.0.1", key=b"secret")
    connection = dict(info)
    gateway = Gateway()
    gateway.server = await serve(gateway.handler, "127.0.0.1", 0, subprotocols=[Subprotocol(V1)],
                                 process_request=gateway.process_request)  # fmt: skip
    port = gateway.server.sockets[0].getsockname()[1]
    sidecar = tmp_path / "kernel.cumulus.json"
    sidecar.write_text(json.dumps({"kernel_id": KERNEL_ID}))  # as after a restart: adopt it
    settings = GatewaySettings(f"http://127.0.0.1:{port}", "")
    proxy = ProxyKernel(connection, settings, KernelOptions(gpu="0.5"), sidecar)
    proxy.local.bind()
    tasks = [asyncio.ensure_future(proxy.serve(c)) for c in ROUTED]
    tasks.append(asyncio.ensure_future(proxy.relay()))
    context = zmq.asyncio.Context()
    front = FrontEnd(connection, context)
    try:
        await front.subscribed()
        yield Harness(proxy, front, gateway)
    finally:
        proxy.stopping.set()
        for task in [*tasks, *proxy.background]:
            task.cancel()
        await asyncio.gather(*tasks, *proxy.background, return_exceptions=True)
        if proxy.link.remote is not None:
            await proxy.link.remote.close()
        await proxy.link.close()
        proxy.local.close()
        context.destroy(linger=0)
        gateway.server.close()
        await gateway.server.wait_closed()


def scenario(tmp_path: Path, body: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        async with running(tmp_path) as harness:
            await body(harness)

    asyncio.run(main())


def test_kernel_info_is_answered_before_the_remote_kernel_is_there(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        request = h.front.request("kernel_info_request")
        reply = await h.front.reply()
        assert reply["parent_header"]["msg_id"] == request["msg_id"]
        assert reply["content"]["implementation"] == "cumulus"
        assert reply["content"]["banner"].startswith(
            "Cumulus GPU kernel (0.5 GPU) on http://127.0.0.1:"
        )
        assert await h.front.iopub_of(request) == [("status", "busy"), ("status", "idle")]
        assert h.gateway.received.empty()

    scenario(tmp_path, body)


def test_a_held_cell_sees_one_busy_its_output_and_one_idle(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cell = h.front.execute("print('hi')")
        await h.connect()
        sent = await h.gateway.next()
        assert sent["header"]["msg_id"] == cell["msg_id"]
        probe = {"msg_id": "gateway-probe", "msg_type": "kernel_info_request"}
        await h.gateway.send("iopub", "status", probe, execution_state="busy")
        await h.gateway.send("iopub", "status", cell, execution_state="busy")
        await h.gateway.send("iopub", "status", probe, execution_state="idle")
        await h.gateway.send("iopub", "stream", cell, name="stdout", text="hi\n")
        await h.gateway.send("iopub", "status", cell, execution_state="idle")
        await h.gateway.send("shell", "execute_reply", cell, status="ok", execution_count=1)
        assert await h.front.iopub_of(cell) == [
            ("status", "busy"),
            ("stream", "hi\n"),
            ("status", "idle"),
        ]
        reply = await h.front.reply()
        assert (reply["parent_header"]["msg_id"], reply["content"]["status"]) == (
            cell["msg_id"],
            "ok",
        )

    scenario(tmp_path, body)


def test_the_kernel_dying_fails_the_running_cell_and_every_later_one(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.connect()
        cell = h.front.execute("import os; os._exit(1)")
        await h.gateway.next()
        await h.gateway.send("iopub", "status", cell, execution_state="busy")
        await h.gateway.send("iopub", "status", {}, execution_state="dead")
        assert await h.front.iopub_of(cell) == [
            ("status", "busy"),
            ("status", "busy"),
            ("error", "KernelDied"),
            ("status", "idle"),
        ]
        assert h.front.states == ["dead"]
        reply = await h.front.reply()
        assert (reply["content"]["status"], reply["content"]["ename"]) == ("error", "KernelDied")
        later = h.front.execute("1")
        assert await h.front.iopub_of(later) == [
            ("status", "busy"),
            ("error", "KernelDied"),
            ("status", "idle"),
        ]
        assert (await h.front.reply())["content"]["ename"] == "KernelDied"
        assert h.gateway.received.empty()

    scenario(tmp_path, body)


def test_after_a_restart_cells_are_held_until_the_new_kernels_iopub_answers(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.connect()
        running_cell = h.front.execute("while True: pass")
        await h.gateway.next()
        await h.gateway.send("iopub", "status", {}, execution_state="restarting")
        assert await h.front.iopub_of(running_cell) == [
            ("status", "busy"),
            ("error", "KernelDied"),
            ("status", "idle"),
        ]
        assert h.front.states == ["restarting"]
        assert (await h.front.reply())["content"]["ename"] == "KernelDied"
        held = h.front.execute("1")
        probe = await h.gateway.next()  # the proxy's probe comes first, the held cell waits
        assert probe["msg_type"] == "kernel_info_request"
        await h.gateway.send("shell", "kernel_info_reply", probe["header"], status="ok")
        await h.gateway.send("iopub", "status", probe["header"], execution_state="busy")
        assert (await h.gateway.next())["header"]["msg_id"] == held["msg_id"]
        await h.gateway.send("iopub", "status", probe["header"], execution_state="idle")
        await h.gateway.send("iopub", "status", held, execution_state="busy")
        await h.gateway.send("iopub", "status", held, execution_state="idle")
        assert await h.front.iopub_of(held) == [("status", "busy"), ("status", "idle")]

    scenario(tmp_path, body)


def test_the_proxys_own_comm_is_answered_and_never_shown(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.connect()
        cell = h.front.execute("1")
        await h.gateway.next()
        comm_open = {"msg_id": "own-open", "msg_type": "comm_open"}
        answer = h.proxy.own.comm("own-comm")
        await h.gateway.send("iopub", "status", cell, execution_state="busy")
        await h.gateway.send("iopub", "comm_msg", comm_open, comm_id="own-comm", data={"ok": True})
        await h.gateway.send("iopub", "comm_close", comm_open, comm_id="own-comm", data={})
        await h.gateway.send("iopub", "comm_msg", cell, comm_id="own-comm", data={"late": True})
        await h.gateway.send("iopub", "stream", cell, name="stdout", text="shown\n")
        await h.gateway.send("iopub", "status", cell, execution_state="idle")
        assert await h.front.iopub_of(cell) == [
            ("status", "busy"),
            ("stream", "shown\n"),
            ("status", "idle"),
        ]
        assert json.loads((await within(answer, "comm answer"))[3])["data"] == {"ok": True}

    scenario(tmp_path, body)
