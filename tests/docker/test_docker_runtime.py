"""Kernels in job containers through a real gateway on the docker runtime: the same end-to-end
checks as the local runtime (execute, transfer, interrupt, restart, expiry), plus what only a
container has (its confinement, the callback, the engine's own lifecycle)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from chronos import Store, discover
from cumulus_jupyter.errors import Unavailable
from cumulus_jupyter.session import RemoteSession
from tests.docker.conftest import client, kernel_containers, runtime_gateway
from tests.support.engine import Engine
from tests.support.gateway import Gateway, remote_session, set_expiry
from tests.support.kernel_ws import KernelSocket
from tests.support.wait import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]  # the first builds the image


def execute(gateway: Gateway, kernel_id: str, code: str) -> Any:
    async def run() -> Any:
        ws = await KernelSocket.open(gateway.url, gateway.token, kernel_id)
        try:
            return await ws.execute(code)
        finally:
            await ws.close()

    return asyncio.run(run())


def container_of(engine: Engine, kernel_id: str) -> Any:
    (found,) = client(engine).containers.list(
        all=True, filters={"label": f"cumulus.kernel={kernel_id}"}
    )
    return found


def partition_state(gateway: Gateway, partition_id: str) -> str:
    with Store(discover({}), gateway.state) as store:
        return store.get(partition_id).state.value


PROBE = """
import json, os
facts = {"uid": os.getuid(), "home": os.environ.get("HOME"),
         "env": sorted(k for k in os.environ if k.startswith(("CHRONOS", "CUMULUS", "JPY", "JUPYTER_TOKEN")))}
try:
    open("/etc/cumulus-probe", "w")
except OSError as exc:
    facts["root_write"] = exc.strerror
with open(os.path.join(os.environ["HOME"], "scratch.txt"), "w") as f:
    facts["home_write"] = f.write("ok")
print(json.dumps(facts))
"""


def test_a_kernel_runs_confined_in_its_own_container(
    docker_gateway: Gateway, engine: Engine
) -> None:
    model = docker_gateway.start_kernel(KERNEL_GPU="0.5")
    kernel_id, partition_id = model["id"], model["cumulus"]["partition_id"]
    reply = execute(docker_gateway, kernel_id, PROBE)
    assert reply.reply["status"] == "ok", reply.stderr
    facts = json.loads(reply.stdout)
    assert facts["uid"] == 1000
    assert facts["root_write"] == "Read-only file system"
    assert facts["home"] == "/work" and facts["home_write"] == 2
    assert "CHRONOS_MEMORY_FRACTION" in facts["env"] and "CUMULUS_KERNEL_ID" in facts["env"]
    # nothing of the gateway's own environment: its state file, its token, the callback token
    assert "CHRONOS_STATE" not in facts["env"] and "CUMULUS_CALLBACK_TOKEN" not in facts["env"]

    container = container_of(engine, kernel_id)
    host = container.attrs["HostConfig"]
    assert container.status == "running"
    assert container.attrs["Config"]["User"] == "1000:1000"
    assert host["ReadonlyRootfs"] is True and host["NetworkMode"] == "host"
    assert host["Memory"] == 4 * 2**30 and host["NanoCpus"] == 2 * 10**9
    assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
    assert host["Init"] is True and host["PidsLimit"] == 512
    assert partition_state(docker_gateway, partition_id) == "active"

    assert docker_gateway.delete(f"/api/kernels/{kernel_id}").status_code == 204
    assert kernel_containers(engine) == []
    assert partition_state(docker_gateway, partition_id) == "released"


def test_interrupt_and_restart_reach_the_container(docker_gateway: Gateway, engine: Engine) -> None:
    model = docker_gateway.start_kernel()
    kernel_id = model["id"]
    first = container_of(engine, kernel_id).id

    async def interrupt() -> None:
        ws = await KernelSocket.open(docker_gateway.url, docker_gateway.token, kernel_id)
        try:
            msg_id = await ws.start_execute(
                "import time; print('sleeping', flush=True); time.sleep(120)"
            )
            await ws.wait_for(lambda m: m["msg_type"] == "stream")
            response = await asyncio.to_thread(
                docker_gateway.post, f"/api/kernels/{kernel_id}/interrupt"
            )
            assert response.status_code == 204
            reply = await ws.finish(msg_id)
            assert reply.reply["ename"] == "KeyboardInterrupt"
            assert (await ws.execute("x = 6 * 7; print(x)")).stdout == "42\n"
        finally:
            await ws.close()

    asyncio.run(interrupt())
    restarted = docker_gateway.post(f"/api/kernels/{kernel_id}/restart")
    assert restarted.status_code == 200, restarted.text
    assert restarted.json()["cumulus"]["partition_id"] == model["cumulus"]["partition_id"]
    second = container_of(engine, kernel_id).id
    assert second != first  # a fresh container; the old one is gone
    assert execute(docker_gateway, kernel_id, "print('x' in dir())").stdout == "False\n"
    assert docker_gateway.delete(f"/api/kernels/{kernel_id}").status_code == 204


@pytest.fixture
def session(docker_gateway: Gateway) -> Iterator[RemoteSession]:
    with remote_session(docker_gateway, "docker") as s:
        yield s


def test_variables_cross_both_ways_over_the_data_path(session: RemoteSession) -> None:
    big = np.random.default_rng(2).random(2 * 2**20)  # 16 MiB: the data path, relayed over TCP
    session.push({"big": big, "small": {"a": 1}})
    assert session.data_path and session.data_bytes >= big.nbytes
    reply = session.execute("doubled = big * 2; small['b'] = 2", lambda m: None)
    assert reply["content"]["status"] == "ok"
    values, missing = session.pull(["doubled", "small", "nothing"])
    assert missing == ["nothing"]
    np.testing.assert_array_equal(values["doubled"], big * 2)
    assert values["small"] == {"a": 1, "b": 2}


def test_expiry_stops_the_kernel_and_removes_its_container(
    docker_gateway: Gateway, engine: Engine
) -> None:
    model = docker_gateway.start_kernel(KERNEL_DURATION="1h")
    kernel_id, partition_id = model["id"], model["cumulus"]["partition_id"]
    assert execute(docker_gateway, kernel_id, "print(1)").stdout == "1\n"
    set_expiry(docker_gateway, partition_id, -1)
    gone = wait_until(
        lambda: (r := docker_gateway.get(f"/api/kernels/{kernel_id}")).status_code == 410 and r,
        what="the kernel to expire",
    )
    assert f"Partition {partition_id}" in gone.json()["message"]
    wait_until(lambda: not kernel_containers(engine), what="the container to be removed")
    assert partition_state(docker_gateway, partition_id) == "expired"


def test_a_container_killed_outside_the_gateway_ends_its_kernel(
    docker_gateway: Gateway, engine: Engine
) -> None:
    model = docker_gateway.start_kernel()
    kernel_id, partition_id = model["id"], model["cumulus"]["partition_id"]

    async def watch() -> list[str]:
        ws = await KernelSocket.open(docker_gateway.url, docker_gateway.token, kernel_id)
        try:
            assert (await ws.execute("x = 1")).reply["status"] == "ok"
            await asyncio.to_thread(container_of(engine, kernel_id).kill)  # docker kill
            dead = await ws.wait_for(
                lambda m: m["msg_type"] == "status" and m["content"]["execution_state"] == "dead"
            )
            return [dead["content"]["execution_state"]]
        finally:
            await ws.close()

    assert asyncio.run(watch()) == ["dead"]
    gone = wait_until(
        lambda: (r := docker_gateway.get(f"/api/kernels/{kernel_id}")).status_code == 410 and r,
        what="410",
    )
    assert "stopped outside the gateway" in gone.json()["message"]
    assert partition_state(docker_gateway, partition_id) == "released"
    wait_until(lambda: not kernel_containers(engine), what="the container to be removed")


def test_the_callback_token_is_single_use(docker_gateway: Gateway) -> None:
    model = docker_gateway.start_kernel()
    url = f"{docker_gateway.url}/api/cumulus/kernels/{model['id']}/callback"
    info = {
        "ip": "127.0.0.1",
        "key": "k",
        **{f"{c}_port": 1 for c in ("shell", "iopub", "stdin", "control", "hb")},
    }
    for token in ("0" * 43, "x", None):
        headers = {"Authorization": f"token {token}"} if token is not None else {}
        answer = httpx.post(url, json={"connection_info": info}, headers=headers)
        assert answer.status_code == 403, answer.text
    assert "already used" in answer.text or "without a token" in answer.text
    assert "refused kernel callback" in docker_gateway.log()
    assert execute(docker_gateway, model["id"], "print(2)").stdout == "2\n"  # unharmed


@pytest.mark.parametrize(
    ("option", "status", "message"),
    [
        ("--DockerRuntime.image=cumulus-job:missing", 503, "is not on the Docker engine"),
        (
            "--DockerRuntime.docker_url=unix:///nonexistent/docker.sock",
            503,
            "Docker engine not reachable",
        ),
        (
            "--DockerRuntime.callback_url=http://127.0.0.1:9",
            500,
            f"exited ({Unavailable.exit_code}) before it called back",  # cannot reach it
        ),
    ],
)
def test_a_kernel_that_cannot_start_says_why_and_frees_its_partition(
    tmp_path: Path, engine: Engine, job_image: str, option: str, status: int, message: str
) -> None:
    gw = Gateway(
        tmp_path / "state" / "chronos.sqlite3", tmp_path / "gateway.log", "--runtime=docker", option,
        env={"DOCKER_HOST": engine.url},
    )  # fmt: skip
    try:
        answer = gw.post("/api/kernels", {"name": "cumulus-gpu"})
        assert answer.status_code == status, answer.text
        assert message in answer.json()["message"]
        assert gw.get("/api/cumulus/partitions").json() == []
        assert gw.get("/api/kernels").json() == []
    finally:
        gw.stop()
    assert kernel_containers(engine) == []


def test_a_container_that_never_calls_back_fails_at_the_launch_timeout(
    tmp_path: Path, engine: Engine, job_image: str
) -> None:
    # a callback address that swallows packets: the launcher's connect hangs
    gw = Gateway(
        tmp_path / "state" / "chronos.sqlite3", tmp_path / "gateway.log", "--runtime=docker",
        "--DockerRuntime.callback_url=http://192.0.2.254:9", "--CumulusKernelManager.launch_timeout=3",
        env={"DOCKER_HOST": engine.url},
    )  # fmt: skip
    try:
        answer = gw.post("/api/kernels", {"name": "cumulus-gpu"})
        assert answer.status_code == 504, answer.text
        assert "never called back" in answer.json()["message"]
        assert gw.get("/api/cumulus/partitions").json() == []
    finally:
        gw.stop()
    assert kernel_containers(engine) == []


def test_a_hundred_kernel_cycles_leave_nothing_behind(
    docker_gateway: Gateway, engine: Engine
) -> None:
    volumes_before = {v.id for v in client(engine).volumes.list()}
    for _ in range(100):
        model = docker_gateway.start_kernel(KERNEL_GPU="0.1")
        assert docker_gateway.delete(f"/api/kernels/{model['id']}").status_code == 204
    assert kernel_containers(engine) == []
    assert {v.id for v in client(engine).volumes.list()} == volumes_before
    assert docker_gateway.get("/api/cumulus/partitions").json() == []
    with Store(discover({}), docker_gateway.state) as store:
        assert store.partitions() == []


INTERNAL = "cumulus-kernels-test"


@pytest.fixture
def internal_network(engine: Engine) -> Iterator[str]:
    """A Docker network of the test's own with no way out (``internal``): the host's end of its
    bridge, where the gateway listens, is all a kernel container can reach."""
    import docker

    c = client(engine)
    with contextlib.suppress(docker.errors.NotFound):
        c.networks.get(INTERNAL).remove()
    pool = docker.types.IPAMPool(subnet="10.214.0.0/24", gateway="10.214.0.1")
    network = c.networks.create(INTERNAL, driver="bridge", internal=True,
                                ipam=docker.types.IPAMConfig(pool_configs=[pool]))  # fmt: skip
    try:
        yield "10.214.0.1"
    finally:
        network.remove()


def test_on_an_internal_network_a_kernel_reaches_only_the_gateway(
    tmp_path: Path, engine: Engine, job_image: str, internal_network: str
) -> None:
    with runtime_gateway(
        tmp_path, engine, "docker", f"--DockerRuntime.network={INTERNAL}", host=internal_network
    ) as gw:
        with remote_session(gw, "internal") as session:
            big = np.arange(2**21, dtype=np.float64)  # 16 MiB over the data path, relayed
            session.push({"big": big})
            probe = (
                "import os, socket\n"
                "where = os.environ['CUMULUS_DATA_HOST']\n"
                "def reach(host, port):\n"
                "    try:\n"
                "        socket.create_connection((host, port), timeout=3).close()\n"
                "        return 'open'\n"
                "    except OSError as exc:\n"
                "        return type(exc).__name__\n"
                f"to_gateway = reach('{internal_network}', {gw.port})\n"
                "to_outside = reach('192.0.2.2', 22), reach('1.1.1.1', 443)\n"
                "half = big / 2\n"
            )
            assert session.execute(probe, lambda m: None)["content"]["status"] == "ok"
            values, _ = session.pull(["where", "to_gateway", "to_outside", "half"])
        assert values["where"].startswith("10.214.0.")  # its ports are on the internal network
        assert values["to_gateway"] == "open"
        assert all(result != "open" for result in values["to_outside"])
        np.testing.assert_array_equal(values["half"], big / 2)
    assert kernel_containers(engine) == []
