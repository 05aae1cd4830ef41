"""Kernels as Swarm services on a single-node Swarm (on loopback) whose node was labelled with the
devices `scripts/setup-worker.sh --detect` found: execute, transfer, interrupt, expiry, and the
task's own lifecycle."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from cumulus_jupyter.session import RemoteSession
from tests.docker.conftest import client
from tests.docker.test_docker_runtime import execute, partition_state
from tests.support.engine import Engine
from tests.support.gateway import Gateway, remote_session, set_expiry
from tests.support.kernel_ws import KernelSocket
from tests.support.wait import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]  # the first builds the image


def service_of(engine: Engine, kernel_id: str) -> Any:
    (found,) = client(engine).services.list(filters={"label": f"cumulus.kernel={kernel_id}"})
    return found


def test_a_kernel_runs_as_a_service_placed_on_its_devices_node(
    swarm_gateway: Gateway, engine: Engine, swarm: str
) -> None:
    devices = swarm_gateway.get("/api/cumulus/devices").json()
    assert devices and devices[0]["id"] == "gpu0"  # the node's label, numbered centrally
    model = swarm_gateway.start_kernel(KERNEL_GPU="0.5")
    kernel_id = model["id"]
    service = service_of(engine, kernel_id)
    spec = service.attrs["Spec"]
    assert spec["TaskTemplate"]["Placement"]["Constraints"] == [f"node.id=={swarm}"]
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container["User"] == "1000:1000" and container["CapabilityDrop"] == ["ALL"]
    reply = execute(
        swarm_gateway, kernel_id,
        "import os, json; print(json.dumps([os.getuid(), os.environ['CHRONOS_MEMORY_FRACTION']]))",
    )  # fmt: skip
    assert json.loads(reply.stdout) == [1000, "0.5"]
    (task,) = service.tasks()
    assert task["NodeID"] == swarm and task["Status"]["State"] == "running"
    assert swarm_gateway.delete(f"/api/kernels/{kernel_id}").status_code == 204
    assert client(engine).services.list(filters={"label": "cumulus.kernel"}) == []
    assert partition_state(swarm_gateway, model["cumulus"]["partition_id"]) == "released"


def test_interrupt_travels_as_a_message_and_restart_makes_a_new_service(
    swarm_gateway: Gateway, engine: Engine
) -> None:
    model = swarm_gateway.start_kernel()
    kernel_id = model["id"]
    first = service_of(engine, kernel_id).id

    async def interrupt() -> None:
        ws = await KernelSocket.open(swarm_gateway.url, swarm_gateway.token, kernel_id)
        try:
            msg_id = await ws.start_execute("import time; print('zz', flush=True); time.sleep(120)")
            await ws.wait_for(lambda m: m["msg_type"] == "stream")
            response = await asyncio.to_thread(
                swarm_gateway.post, f"/api/kernels/{kernel_id}/interrupt"
            )
            assert response.status_code == 204
            assert (await ws.finish(msg_id)).reply["ename"] == "KeyboardInterrupt"
        finally:
            await ws.close()

    asyncio.run(interrupt())
    assert swarm_gateway.post(f"/api/kernels/{kernel_id}/restart").status_code == 200
    assert service_of(engine, kernel_id).id != first
    assert execute(swarm_gateway, kernel_id, "print(3)").stdout == "3\n"
    assert swarm_gateway.delete(f"/api/kernels/{kernel_id}").status_code == 204


@pytest.fixture
def session(swarm_gateway: Gateway) -> Iterator[RemoteSession]:
    with remote_session(swarm_gateway, "swarm") as s:
        yield s


def test_variables_cross_through_the_gateway(session: RemoteSession) -> None:
    big = np.arange(3 * 2**20, dtype=np.float32)  # 12 MiB: relayed by the gateway
    session.push({"big": big})
    assert session.data_path and session.data_bytes >= big.nbytes
    assert session.execute("total = float(big.sum())", lambda m: None)["content"]["status"] == "ok"
    values, _ = session.pull(["total", "big"])
    assert values["total"] == pytest.approx(float(big.sum()))
    np.testing.assert_array_equal(values["big"], big)


def test_expiry_removes_the_service(swarm_gateway: Gateway, engine: Engine) -> None:
    model = swarm_gateway.start_kernel()
    kernel_id, partition_id = model["id"], model["cumulus"]["partition_id"]
    set_expiry(swarm_gateway, partition_id, -1)
    wait_until(
        lambda: swarm_gateway.get(f"/api/kernels/{kernel_id}").status_code == 410, what="expiry"
    )
    assert client(engine).services.list(filters={"label": "cumulus.kernel"}) == []
    assert partition_state(swarm_gateway, partition_id) == "expired"


def test_a_service_removed_outside_the_gateway_ends_its_kernel(
    swarm_gateway: Gateway, engine: Engine
) -> None:
    model = swarm_gateway.start_kernel()
    kernel_id, partition_id = model["id"], model["cumulus"]["partition_id"]
    service_of(engine, kernel_id).remove()  # docker service rm
    gone = wait_until(
        lambda: (r := swarm_gateway.get(f"/api/kernels/{kernel_id}")).status_code == 410 and r,
        what="410",
    )
    assert "service was removed outside the gateway" in gone.json()["message"]
    assert partition_state(swarm_gateway, partition_id) == "released"
