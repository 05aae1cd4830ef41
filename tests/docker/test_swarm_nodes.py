"""Two hosts on one machine: the gateway's engine is the Swarm manager, a second dockerd in a
network namespace of the test's own (behind a veth pair) is a worker holding the only labelled
device. Kernels land on the worker, clients still talk only to the gateway, behind HTTPS nothing
crosses to the worker in clear, a worker that joins while the gateway runs is offered (and one
drained or gone is not, while the manager's own device serves on), and a worker that leaves the
Swarm mid-kernel ends its kernel and frees its partition."""

from __future__ import annotations

import contextlib
import json
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
        if node.client.info()["Swarm"]["LocalNodeState"] != "inactive":
            node.client.swarm.leave(force=True)  # an earlier run's Swarm, kept in its data root
        worker_id = join(engine, node)
        label_node(engine, worker_id, node, job_image)
        yield {"engine": node, "id": worker_id}
    finally:
        stop_worker(engine, node)


def join(manager: Engine, node: Engine) -> str:
    """``node`` joins the manager's Swarm as a worker; its node id."""
    token = manager.client.swarm.attrs["JoinTokens"]["Worker"]
    node.client.swarm.join(
        remote_addrs=[f"{MANAGER_IP}:2377"], join_token=token,
        listen_addr=f"{WORKER_IP}:2377", advertise_addr=WORKER_IP,
    )  # fmt: skip
    return str(node.client.info()["Swarm"]["NodeID"])


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


MANAGER_DEVICES = [{"name": "manager-device", "vendor": "other", "kind": "cpu",
                    "memory_bytes": 2**32}]  # fmt: skip


def set_devices(manager: Engine, node_id: str, devices: str | None) -> None:
    """Set (None: remove) ``node_id``'s devices label, as an operator would on the manager."""
    node = manager.client.nodes.get(node_id)
    spec = node.attrs["Spec"]
    labels = {k: v for k, v in (spec.get("Labels") or {}).items() if k != "cumulus.devices"}
    spec["Labels"] = labels | ({"cumulus.devices": devices} if devices else {})
    node.update(spec)


def set_availability(manager: Engine, node_id: str, availability: str) -> None:
    node = manager.client.nodes.get(node_id)
    node.update(node.attrs["Spec"] | {"Availability": availability})


def offered(gateway: Gateway) -> list[tuple[str, str, bool]]:
    """Each device the gateway lists: id, node, online."""
    return [(d["id"], d["host"], d["online"]) for d in gateway.get("/api/cumulus/devices").json()]


def kernel_node(engine: Engine, kernel_id: str) -> str:
    (service,) = engine.client.services.list(filters={"label": f"cumulus.kernel={kernel_id}"})
    (task,) = service.tasks()
    return str(task["NodeID"])


def ended(gateway: Gateway, kernel_id: str) -> Any:
    return wait_until(
        lambda: (r := gateway.get(f"/api/kernels/{kernel_id}")).status_code == 410 and r,
        timeout=120,
        what="the kernel to end with its node",
    )


@pytest.fixture
def joins_later(
    tmp_path: Path, engine: Engine, worker: dict[str, Any]
) -> Iterator[tuple[Gateway, str, str]]:
    """The worker out of the Swarm and the manager holding a device of its own when the gateway
    (discovering every 0.5 s) starts; the gateway, the manager's node id and the worker's
    devices label. Afterwards the worker is back in the Swarm, labelled as before, and the
    manager unlabelled."""
    manager, node = engine.client, worker["engine"]
    label = manager.nodes.get(worker["id"]).attrs["Spec"]["Labels"]["cumulus.devices"]
    node.client.swarm.leave()
    manager.nodes.get(worker["id"]).remove(force=True)
    manager_id = str(manager.info()["Swarm"]["NodeID"])
    set_devices(engine, manager_id, json.dumps(MANAGER_DEVICES))
    try:
        with runtime_gateway(
            tmp_path, engine, "swarm", "--CumulusGateway.discovery_interval=0.5", host=MANAGER_IP
        ) as gw:
            yield gw, manager_id, label
    finally:
        set_devices(engine, manager_id, None)
        if node.client.info()["Swarm"]["LocalNodeState"] != "active":
            with contextlib.suppress(Exception):  # the test's node entry, left down
                manager.nodes.get(worker["id"]).remove(force=True)
            worker["id"] = join(engine, node)
        set_devices(engine, worker["id"], label)
    assert manager.services.list(filters={"label": "cumulus.kernel"}) == []


def test_a_worker_that_joins_while_the_gateway_runs_is_offered_and_one_that_leaves_is_not(
    joins_later: tuple[Gateway, str, str], engine: Engine, worker: dict[str, Any]
) -> None:
    """No restart: a worker that joins (and is labelled) is offered as a new device, gpu1,
    and a kernel lands on it; drained, it is offline (a kernel naming it is refused at once,
    new ones go to the manager's gpu0), active again it is gpu1 again; when it leaves the
    Swarm its kernel ends, its device is offline and the manager's serves on."""
    gateway, manager_id, label = joins_later
    assert offered(gateway) == [("gpu0", manager_id, True)]
    on_manager = gateway.start_kernel(KERNEL_GPU="0.5")
    assert on_manager["cumulus"]["device"] == "gpu0"

    worker["id"] = join(engine, worker["engine"])
    set_devices(engine, worker["id"], label)  # what setup-worker.sh found on it
    both = [("gpu0", manager_id, True), ("gpu1", worker["id"], True)]
    wait_until(lambda: offered(gateway) == both, 60, "the new worker's device to be offered")
    on_worker = gateway.start_kernel(KERNEL_GPU="0.5", KERNEL_GPU_DEVICES="gpu1")
    assert on_worker["cumulus"]["device"] == "gpu1"
    assert kernel_node(engine, on_worker["id"]) == worker["id"]
    assert execute(gateway, on_worker["id"], "print(6 * 7)").stdout == "42\n"
    assert gateway.delete(f"/api/kernels/{on_worker['id']}").status_code == 204

    set_availability(engine, worker["id"], "drain")
    drained = [("gpu0", manager_id, True), ("gpu1", worker["id"], False)]
    wait_until(lambda: offered(gateway) == drained, 60, "the drained worker to be offline")
    refused = gateway.post("/api/kernels", {"name": "cumulus-gpu", "env": {
        "KERNEL_GPU": "0.1", "KERNEL_GPU_DEVICES": "gpu1", "KERNEL_WAIT": "0"}})  # fmt: skip
    assert refused.status_code == 429, refused.text
    assert "gpu1 not found by the last discovery" in refused.json()["message"]
    placed = gateway.start_kernel(KERNEL_GPU="0.3")  # the manager's gpu0 serves on
    assert placed["cumulus"]["device"] == "gpu0"
    assert execute(gateway, placed["id"], "print('on the manager')").stdout == "on the manager\n"
    assert gateway.delete(f"/api/kernels/{placed['id']}").status_code == 204

    set_availability(engine, worker["id"], "active")
    wait_until(lambda: offered(gateway) == both, 60, "the worker to be online again as gpu1")
    again = gateway.start_kernel(KERNEL_GPU="0.5", KERNEL_GPU_DEVICES="gpu1")
    assert kernel_node(engine, again["id"]) == worker["id"]
    assert execute(gateway, again["id"], "print('back')").stdout == "back\n"

    worker["engine"].client.swarm.leave()
    left = [("gpu0", manager_id, True), ("gpu1", worker["id"], False)]
    wait_until(lambda: offered(gateway) == left, 60, "the departed worker to be offline")
    gone = ended(gateway, again["id"])
    assert "left the Swarm" in gone.json()["message"]
    assert partition_state(gateway, again["cumulus"]["partition_id"]) == "released"
    assert execute(gateway, on_manager["id"], "print('still here')").stdout == "still here\n"
    last = gateway.start_kernel(KERNEL_GPU="0.5")
    assert last["cumulus"]["device"] == "gpu0"
    for kernel in (on_manager, last):
        assert gateway.delete(f"/api/kernels/{kernel['id']}").status_code == 204


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
    gone = ended(gateway, kernel_id)
    assert "left the Swarm" in gone.json()["message"]
    assert partition_state(gateway, partition_id) == "released"
