"""A kernel printing 1 GB: the gateway stays responsive (a health request and another kernel's
cell are answered while the flood is still being relayed) and the output reaching the client is
rate-limited with a notice, by jupyter_server's ``iopub_data_rate_limit`` (1 MB/s over a 3 s
window by default; ``--ZMQChannelsWebsocketConnection.iopub_data_rate_limit`` sets it); the
limit lifts when the cell ends, and the kernel's next cell streams normally."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.fault.conftest import assert_recovered
from tests.support.gateway import Gateway
from tests.support.kernel_ws import KernelSocket

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]

MIB = 2**20
FLOOD_BYTES = 1024 * MIB
# 1 GiB in 1024 flushed writes of 1 MiB: 1024 stream messages
FLOOD = (
    "import sys\nline = 'x' * (2**20 - 1) + '\\n'\n"
    "for _ in range(1024):\n    sys.stdout.write(line)\n    sys.stdout.flush()\n"
)
DATA_NOTICE = "IOPub data rate exceeded"


class Reader:
    """Reads a kernel socket as fast as it comes, noting when the cell's idle status came."""

    def __init__(self, ws: KernelSocket, msg_id: str) -> None:
        self.ws, self.msg_id = ws, msg_id
        self.messages: list[dict[str, Any]] = []
        self.idle = asyncio.Event()
        self.task = asyncio.ensure_future(self.read())

    async def read(self) -> None:
        while not self.idle.is_set():
            msg = await self.ws.recv(240)
            self.messages.append(msg)
            if (
                msg["msg_type"] == "status"
                and msg["parent_header"].get("msg_id") == self.msg_id
                and msg["content"]["execution_state"] == "idle"
            ):
                self.idle.set()

    def of_cell(self, name: str) -> str:
        return "".join(
            m["content"]["text"]
            for m in self.messages
            if m["msg_type"] == "stream"
            and m["parent_header"].get("msg_id") == self.msg_id
            and m["content"]["name"] == name
        )


async def flood(gateway: Gateway, noisy: str, quiet: str) -> dict[str, Any]:
    ws = await KernelSocket.open(gateway.url, gateway.token, noisy)
    other = await KernelSocket.open(gateway.url, gateway.token, quiet)
    try:
        reader = Reader(ws, await ws.start_execute(FLOOD))
        while DATA_NOTICE not in reader.of_cell("stderr"):  # the flood has reached the gateway
            await asyncio.wait([reader.task], timeout=0.05)
            assert not reader.task.done() or reader.task.exception() is None
        health = await asyncio.to_thread(gateway.get, "/api/cumulus/health")
        answer = await other.execute("print(6 * 7)")
        streaming = not reader.idle.is_set()  # the gateway had not relayed the cell's end yet
        await asyncio.wait_for(reader.task, 240)
        after = await ws.execute("print('after the flood')")
        return {
            "health": health.status_code, "answer": answer.stdout, "streaming": streaming,
            "stdout": reader.of_cell("stdout"), "stderr": reader.of_cell("stderr"),
            "after": after.stdout,
        }  # fmt: skip
    finally:
        await ws.close()
        await other.close()


def test_a_kernel_printing_1_gb_is_rate_limited_and_the_gateway_stays_responsive(
    gateway: Gateway,
) -> None:
    noisy = gateway.start_kernel(KERNEL_GPU="0.2")["id"]
    quiet = gateway.start_kernel(KERNEL_GPU="0.2")["id"]

    seen = asyncio.run(flood(gateway, noisy, quiet))

    assert seen["health"] == 200
    assert seen["answer"] == "42\n"
    assert seen["streaming"], "the flood was over before the other requests were answered"
    assert seen["stderr"].count(DATA_NOTICE) >= 1  # the client is told its output was cut
    assert len(seen["stdout"]) < FLOOD_BYTES // 16  # most of the gigabyte never reached it
    assert seen["after"] == "after the flood\n"  # the limit lifts when the cell ends
    assert_recovered(gateway)
