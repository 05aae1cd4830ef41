"""dockerd restarted under the docker runtime, while a kernel runs in its container.

Our dockerd runs without ``--live-restore`` (Debian's default), so stopping it stops every
container. While the engine is away the gateway's poll of the container says "alive" (a
container may well run on; docker-py's connection error is read as "engine away", not raised
into jupyter_client's restarter). Once the engine answers again the gateway sees the container
stopped with no ``docker kill``/``stop`` of anyone's in the engine's events, which is a crash:
jupyter_client's restarter starts the kernel again, in a new container, in the same partition,
and its clients get the usual ``restarting`` status (its variables are gone, as after any
crash). The old container is removed; nothing is left when the kernel is deleted."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.docker.conftest import LABEL, client, kernel_containers
from tests.docker.test_docker_runtime import partition_state
from tests.support.engine import Engine
from tests.support.gateway import Gateway
from tests.support.kernel_ws import KernelSocket
from tests.support.wait import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.fault, pytest.mark.timeout(300)]


def execute(gateway: Gateway, kernel_id: str, code: str) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        ws = await KernelSocket.open(gateway.url, gateway.token, kernel_id)
        try:
            reply = await ws.execute(code)
            return reply.reply | {"stdout": reply.stdout}
        finally:
            await ws.close()

    return asyncio.run(go())


def running_containers(engine: Engine) -> list[str]:
    """The ids of the kernel containers running on the engine."""
    return [c["Id"] for c in client(engine).api.containers(filters={"label": LABEL})]


def test_dockerd_restarted_under_a_kernel_restarts_it_in_its_partition(
    docker_gateway: Gateway, engine: Engine
) -> None:
    model = docker_gateway.start_kernel()
    kernel_id, partition_id = model["id"], model["cumulus"]["partition_id"]
    assert execute(docker_gateway, kernel_id, "x = 1\nprint(x)")["stdout"] == "1\n"
    [before] = running_containers(engine)

    engine.stop()  # SIGTERM to dockerd, by PID: it stops its containers
    assert docker_gateway.get("/api/cumulus/health").json()["status"] == "ok"
    assert docker_gateway.get(f"/api/kernels/{kernel_id}").status_code == 200
    engine.start()

    wait_until(lambda: running_containers(engine) not in ([], [before]), 120, "a new container")
    # the same kernel id answers, from its new container
    assert execute(docker_gateway, kernel_id, "print(2)")["stdout"] == "2\n"
    assert execute(docker_gateway, kernel_id, "x")["ename"] == "NameError"  # a fresh process
    [model_now] = docker_gateway.get("/api/kernels").json()
    assert model_now["cumulus"]["partition_id"] == partition_id
    assert partition_state(docker_gateway, partition_id) == "active"
    assert len(kernel_containers(engine)) == 1  # the old container is gone
    assert running_containers(engine) != [before]
    assert "Exception in callback" not in docker_gateway.log()

    assert docker_gateway.delete(f"/api/kernels/{kernel_id}").status_code == 204
    assert partition_state(docker_gateway, partition_id) == "released"
