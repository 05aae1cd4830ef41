"""Two hosts on one machine: the gateway's engine is the Swarm manager, a second dockerd in a
network namespace of the test's own (behind a veth pair) is a worker holding the only labelled
device. Kernels land on the worker, clients still talk only to the gateway, behind HTTPS nothing
crosses to the worker in clear, and a worker that leaves the Swarm mid-kernel ends its kernel
and frees its partition."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pytest

from cumulus_jupyter.connection import GatewaySettings
from cumulus_jupyter.session import RemoteSession
from tests.docker.conftest import label_node, runtime_gateway
from tests.docker.test_docker_runtime import execute, partition_state
from tests.support.engine import Engine
from tests.support.gateway import Gateway, remote_session
from tests.support.tls import HttpsGateway, make_pki
from tests.support.wait import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

NETNS = "cumulus-w1"
MANAGER_IP, WORKER_IP = "10.213.0.1", "10.213.0.2"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def worker(engine: Engine, job_image: str) -> Iterator[dict[str, Any]]:
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)  # an interrupted run's
    subprocess.run(["ip", "link", "del", "cw-host"], capture_output=True)
    ip("netns", "add", NETNS)
    node = Engine("worker1", netns=NETNS)
    try:
        ip("link", "add", "cw-host", "type", "veth", "peer", "name", "cw-node")
        ip("link", "set", "cw-node", "netns", NETNS)
        ip("addr", "add", f"{MANAGER_IP}/24", "dev", "cw-host")
        ip("link", "set", "cw-host", "up")
        for args in (("addr", "add", f"{WORKER_IP}/24", "dev", "cw-node"),
                     ("link", "set", "cw-node", "up"), ("link", "set", "lo", "up")):  # fmt: skip
            ip("netns", "exec", NETNS, "ip", *args)
        node.start()
        copy_image(engine, node, job_image)
        manager = engine.client
        if manager.info()["Swarm"]["LocalNodeState"] == "active":
            manager.swarm.leave(force=True)
        manager.swarm.init(advertise_addr=MANAGER_IP, listen_addr=f"{MANAGER_IP}:2377")
        token = manager.swarm.attrs["JoinTokens"]["Worker"]
        if node.client.info()["Swarm"]["LocalNodeState"] != "inactive":
            node.client.swarm.leave(force=True)  # an earlier run's Swarm, kept in its data root
        node.client.swarm.join(
            remote_addrs=[f"{MANAGER_IP}:2377"], join_token=token,
            listen_addr=f"{WORKER_IP}:2377", advertise_addr=WORKER_IP,
        )  # fmt: skip
        worker_id = node.client.info()["Swarm"]["NodeID"]
        label_node(engine, worker_id, node, job_image)
        yield {"engine": node, "id": worker_id}
    finally:
        stop_worker(engine, node)


def copy_image(manager: Engine, node: Engine, tag: str) -> None:
    """No registry: the worker gets the job image as `setup-worker.sh --image` would give it."""
    wanted = manager.client.images.get(tag).id
    if not any(image.id == wanted for image in node.client.images.list()):
        with tempfile.TemporaryFile() as archive:
            for chunk in manager.client.images.get(tag).save(named=True):
                archive.write(chunk)
            archive.seek(0)
            node.client.images.load(archive.read())
    repository, _, version = tag.partition(":")
    node.client.images.get(wanted).tag(repository, version)


def stop_worker(manager: Engine, node: Engine) -> None:
    import docker

    # kernels the worker ran, even after its engine was killed (their shims outlive it)
    pids = subprocess.run(["ip", "netns", "pids", NETNS], capture_output=True, text=True).stdout
    node_pid = node.proc.pid if node.proc else None
    for pid in pids.split():
        if int(pid) != node_pid:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(int(pid), signal.SIGKILL)
    node.stop()
    client = manager.client
    with contextlib.suppress(docker.errors.APIError):  # the manager has left already
        if client.info()["Swarm"]["LocalNodeState"] == "active":
            client.swarm.leave(force=True)
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    subprocess.run(["ip", "link", "del", "cw-host"], capture_output=True)


@pytest.fixture
def gateway(tmp_path: Path, engine: Engine, worker: dict[str, Any]) -> Iterator[Gateway]:
    with runtime_gateway(tmp_path, engine, "swarm", host=MANAGER_IP) as gw:
        yield gw
    assert engine.client.services.list(filters={"label": "cumulus.kernel"}) == []


def test_a_kernel_on_the_worker_is_reached_only_through_the_gateway(
    gateway: Gateway, engine: Engine, worker: dict[str, Any]
) -> None:
    with remote_session(gateway, "nodes", gpu="0.5") as session:
        (service,) = engine.client.services.list(filters={"label": "cumulus.kernel"})
        (task,) = service.tasks()
        assert task["NodeID"] == worker["id"]
        session.execute("import os; where = os.environ['CUMULUS_DATA_HOST']", lambda m: None)
        assert session.pull(["where"])[0]["where"] == WORKER_IP  # its ports are on the worker
        big = np.arange(2**21, dtype=np.float64)  # 16 MiB: relayed by the gateway to the worker
        session.push({"big": big})
        assert session.data_path and session.data_bytes >= big.nbytes
        session.execute("half = big / 2", lambda m: None)
        values, _ = session.pull(["half"])
        np.testing.assert_array_equal(values["half"], big / 2)
        assert session.kernel is not None
        model = gateway.get(f"/api/kernels/{session.kernel.id}").json()
        assert model["cumulus"]["device"] == "gpu0"


ETH_P_ALL = 0x0003
PROBE = b"cumulus-wire-probe-"


class Capture:
    """Every frame that crosses ``interface``, kept while the block runs."""

    def __init__(self, interface: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((interface, 0))
        self.sock.settimeout(0.2)
        self.frames = bytearray()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                self.frames += self.sock.recv(65536)
            except TimeoutError:
                continue

    def __enter__(self) -> Capture:
        self.thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.done.set()
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture
def https_swarm(
    tmp_path: Path,
    engine: Engine,
    worker: dict[str, Any],
) -> Iterator[HttpsGateway]:
    pki = make_pki(tmp_path, MANAGER_IP)
    gw = HttpsGateway(
        tmp_path, pki, "--runtime=swarm", env={"DOCKER_HOST": engine.url}, host=MANAGER_IP
    )
    try:
        yield gw
    finally:
        gw.stop()
    assert engine.client.services.list(filters={"label": "cumulus.kernel"}) == []


def test_nothing_crosses_to_a_worker_in_clear(
    https_swarm: HttpsGateway, worker: dict[str, Any]
) -> None:
    """Behind HTTPS, every frame on the link to the worker captured (an AF_PACKET socket on the
    manager's end of the veth, as tcpdump would): the kernel's ZMQ link is CurveZMQ, its
    callback HTTPS, a variable pushed to it rides the Curve link (no plaintext data port to
    another host); the code and the variable's bytes never appear on the wire."""
    settings = GatewaySettings(https_swarm.url, https_swarm.token, str(https_swarm.pki.ca))
    secret = PROBE * 60_000  # 1.1 MiB: above the data path's threshold
    with Capture("cw-host") as wire:
        session = RemoteSession("wire", settings)
        session.start("0.5", "10m", lambda line: None)
        try:
            session.push({"secret": secret})
            code = "marker = 'cumulus-code-probe'; n = len(secret); back = secret[::-1]"
            assert session.execute(code, lambda message: None)["content"]["status"] == "ok"
            values, _ = session.pull(["n", "back"])
        finally:
            session.release()
    assert values["n"] == len(secret) and values["back"] == secret[::-1]
    assert session.data_bytes == 0  # no plaintext data port to another host behind HTTPS
    captured = bytes(wire.frames)
    assert b"CURVE" + bytes(15) in captured  # the kernel's ZMTP greetings name their mechanism
    assert b"NULL" + bytes(16) not in captured  # and none is a plaintext ZMTP link
    assert PROBE not in captured and PROBE[::-1] not in captured
    assert b"cumulus-code-probe" not in captured


def test_a_worker_leaving_mid_kernel_ends_the_kernel_and_frees_the_partition(
    gateway: Gateway, worker: dict[str, Any]
) -> None:
    model = gateway.start_kernel(KERNEL_GPU="0.5")
    kernel_id, partition_id = model["id"], model["cumulus"]["partition_id"]
    assert execute(gateway, kernel_id, "print(40 + 2)").stdout == "42\n"
    node: Engine = worker["engine"]
    assert node.proc is not None
    node.proc.kill()  # the host is gone: its engine stops answering the manager
    node.proc.wait(timeout=30)
    gone = wait_until(
        lambda: (r := gateway.get(f"/api/kernels/{kernel_id}")).status_code == 410 and r,
        timeout=120,
        what="the kernel to end with its node",
    )
    assert "left the Swarm" in gone.json()["message"]
    assert partition_state(gateway, partition_id) == "released"
