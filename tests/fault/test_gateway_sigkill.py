"""The gateway killed with SIGKILL while 16 kernels are mid-cell, then started again.

What happens (also in the README's "Faults" and `gateway.adoption`): the restarted gateway
adopts all 16 kernels (same ids, same partitions); each kernel's cell ran on through the outage
(its variable kept counting); the output the kernels printed while no gateway listened is lost
(IOPub is publish/subscribe: nobody subscribed), and so is the reply of a cell that finished
then; output after the adoption arrives as usual. A client's first connection to an adopted
kernel is told exactly that, before anything else (a stderr stream message and a ``cumulus``
message, ``event: gateway_restarted``). Dead kernels' partitions are released on adoption:
that case is `tests/integration/test_gateway_durability.py`'s."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.fault.conftest import assert_recovered
from tests.support.gateway import Gateway
from tests.support.kernel_ws import KernelSocket

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]

KERNELS = 16
# counts up, one line every 0.1 s, for far longer than the test: the test interrupts it
CELL = "import time\nfor n in range(100_000):\n    count = n\n    print(n, flush=True)\n    time.sleep(0.1)"
DEVICES = [{"name": f"dev{i}", "vendor": "other", "memory_bytes": 2**34} for i in range(4)]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    env = {"CHRONOS_DEVICES": json.dumps(DEVICES)}  # 16 x 0.2 GPU need 4 devices
    gw = Gateway(tmp_path / "state" / "chronos.sqlite3", tmp_path / "gateway.log", env=env)
    try:
        yield gw
    finally:
        gw.stop()


def printed(messages: list[dict[str, Any]]) -> list[int]:
    text = "".join(
        m["content"]["text"]
        for m in messages
        if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
    )
    return [int(line) for line in text.split()]


async def start_cells(gateway: Gateway, ids: list[str]) -> dict[str, int]:
    """Each kernel's cell started and seen printing; the last number each client saw."""

    async def one(kernel_id: str) -> int:
        ws = await KernelSocket.open(gateway.url, gateway.token, kernel_id)
        try:
            await ws.start_execute(CELL)
            seen: list[dict[str, Any]] = []
            while len(printed(seen)) < 3:
                seen.append(await ws.wait_for(lambda m: m["msg_type"] == "stream"))
            return printed(seen)[-1]
        finally:
            await ws.close()

    return dict(zip(ids, await asyncio.gather(*map(one, ids)), strict=True))


async def reconnect(gateway: Gateway, kernel_id: str) -> dict[str, Any]:
    """A client's first connection after the restart: what it hears first, the running cell's
    output from then on, and the counter once the cell is interrupted."""
    ws = await KernelSocket.open(gateway.url, gateway.token, kernel_id)
    try:
        first = [await ws.recv(), await ws.recv()]
        output: list[dict[str, Any]] = []
        while len(printed(output)) < 3:
            output.append(await ws.wait_for(lambda m: m["msg_type"] == "stream"))
        response = await asyncio.to_thread(gateway.post, f"/api/kernels/{kernel_id}/interrupt")
        assert response.status_code == 204, response.text
        error = await ws.wait_for(lambda m: m["msg_type"] == "error")  # KeyboardInterrupt
        cell = error["parent_header"]["msg_id"]  # the cell started before the crash
        await ws.wait_for(
            lambda m: (
                m["msg_type"] == "status"
                and m["parent_header"].get("msg_id") == cell
                and m["content"]["execution_state"] == "idle"
            )
        )
        after = await ws.execute("print(count)")
        assert after.reply["status"] == "ok", after.reply
        return {"first": first, "resumed": printed(output), "count": int(after.stdout)}
    finally:
        await ws.close()


def test_sigkill_while_16_kernels_run_cells_adopts_them_and_tells_clients_what_was_lost(
    gateway: Gateway,
) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        models = list(pool.map(lambda _: gateway.start_kernel(KERNEL_GPU="0.2"), range(KERNELS)))
    ids = [m["id"] for m in models]
    last_seen = asyncio.run(start_cells(gateway, ids))

    gateway.kill()  # mid-cell, no cleanup
    gateway.start()

    listed = {k["id"]: k for k in gateway.get("/api/kernels").json()}
    assert sorted(listed) == sorted(ids)
    for model in models:
        assert listed[model["id"]]["cumulus"]["partition_id"] == model["cumulus"]["partition_id"]

    async def all_of_them() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(reconnect(gateway, k) for k in ids)))

    for kernel_id, seen in zip(ids, asyncio.run(all_of_them()), strict=True):
        stderr, notice = seen["first"]
        assert stderr["msg_type"] == "stream" and stderr["content"]["name"] == "stderr"
        assert "gateway was restarted" in stderr["content"]["text"]
        assert "is lost" in stderr["content"]["text"]
        assert notice["msg_type"] == "cumulus"
        assert notice["content"]["event"] == "gateway_restarted"
        resumed = seen["resumed"]
        # the cell ran on: lines printed during the outage never came; those after it do, in order
        assert resumed[0] > last_seen[kernel_id] + 1, (kernel_id, last_seen[kernel_id], resumed)
        assert resumed == list(range(resumed[0], resumed[0] + len(resumed)))
        assert seen["count"] >= resumed[-1]  # the variables are the cell's, kept

    # told once per client session: a second connection hears nothing of it
    async def second_look() -> list[str]:
        ws = await KernelSocket.open(gateway.url, gateway.token, ids[0])
        try:
            reply = await ws.execute("print('again')")
            return [reply.stdout, reply.stderr]
        finally:
            await ws.close()

    assert asyncio.run(second_look()) == ["again\n", ""]
    assert_recovered(gateway)
