"""Abandoned requests leave nothing behind: a ``POST /api/kernels`` whose client goes away, and a
batch job cancelled at any point of its start, take no partition and leave no kernel process.

Leftovers are checked where they would be: the gateway's child processes (local kernels are
its children), the Chronos store's active partitions, ``/api/kernels`` and the queue.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pytest

from chronos import Store, discover
from tests.support.gateway import Gateway
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

JOB = {"code": "import time; time.sleep(60)", "gpu": "0.5", "duration": "10m"}


@pytest.fixture
def patient_gateway(tmp_path: Path) -> Iterator[Gateway]:
    """A gateway whose requests wait in the queue far longer than any test: a request that
    leaves the queue does so because its client left, not because it timed out."""
    gw = Gateway(
        tmp_path / "state" / "chronos.sqlite3",
        tmp_path / "gateway.log",
        "--CumulusKernelManager.launch_timeout=600",
        "--CumulusKernelManager.job_queue_timeout=600",
    )
    try:
        yield gw
    finally:
        gw.stop()


def kernel_processes(gateway: Gateway) -> list[psutil.Process]:
    assert gateway.proc is not None
    return psutil.Process(gateway.proc.pid).children(recursive=True)


def kernels_running(gateway: Gateway) -> list[psutil.Process]:
    """One per kernel: the gateway's own children (a sandboxed kernel is a shell, bubblewrap
    and the kernel below it)."""
    assert gateway.proc is not None
    return psutil.Process(gateway.proc.pid).children(recursive=False)


def active_partitions(gateway: Gateway) -> list[Any]:
    with Store(discover({}), gateway.state) as store:
        return store.partitions()


def queue(gateway: Gateway) -> list[dict[str, Any]]:
    return gateway.get("/api/cumulus/queue").json()  # type: ignore[no-any-return]


def leftovers(gateway: Gateway) -> dict[str, Any]:
    """What the gateway still holds, by where it is held (empty when nothing is)."""
    found = {
        "processes": [f"{p.pid} ({p.status()})" for p in kernel_processes(gateway)],
        "partitions": [p.id for p in active_partitions(gateway)],
        "queue": queue(gateway),
        "kernels": gateway.get("/api/kernels").json(),
    }
    return {where: held for where, held in found.items() if held}


def nothing_left(gateway: Gateway) -> bool:
    return not leftovers(gateway)


def wait_for_nothing_left(gateway: Gateway, what: str) -> None:
    try:
        wait_until(lambda: nothing_left(gateway), what=what)
    except AssertionError as timeout:
        raise AssertionError(f"{timeout}; still held: {leftovers(gateway)}") from None


def open_request(gateway: Gateway, env: dict[str, str]) -> socket.socket:
    """A ``POST /api/kernels`` sent on a raw connection that is left waiting for its answer."""
    body = json.dumps({"name": "cumulus-gpu", "env": env}).encode()
    head = (
        f"POST /api/kernels HTTP/1.1\r\nHost: {gateway.host}:{gateway.port}\r\n"
        f"Authorization: token {gateway.token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    client = socket.create_connection((gateway.host, gateway.port))
    client.sendall(head + body)
    return client


def test_a_queued_request_whose_client_leaves_never_takes_a_partition(
    patient_gateway: Gateway,
) -> None:
    gateway = patient_gateway
    holder = gateway.start_kernel(KERNEL_GPU="1")  # the whole device
    client = open_request(gateway, {"KERNEL_GPU": "0.5", "KERNEL_USERNAME": "gone"})
    waiting = wait_until(lambda: queue(gateway), what="the request to queue")
    assert [w["owner"] for w in waiting] == ["gone"]

    client.close()  # a client timeout, a closed tab
    wait_until(lambda: not queue(gateway), what="the abandoned request to leave the queue")

    assert gateway.delete(f"/api/kernels/{holder['id']}").status_code == 204
    # the whole device, at once and without waiting: nothing took any of it meanwhile
    after = gateway.start_kernel(KERNEL_GPU="1", KERNEL_WAIT="0")
    assert [k["id"] for k in gateway.get("/api/kernels").json()] == [after["id"]]
    assert [p.id for p in active_partitions(gateway)] == [after["cumulus"]["partition_id"]]
    assert len(kernels_running(gateway)) == 1
    assert "the client left before its kernel started" in gateway.log()
    assert gateway.delete(f"/api/kernels/{after['id']}").status_code == 204
    wait_for_nothing_left(gateway, "the gateway to hold nothing")


def leave(client: socket.socket) -> bytes:
    """Stop sending (the gateway reads that as the client leaving) and read what came back."""
    client.shutdown(socket.SHUT_WR)
    client.settimeout(60)
    answer = b""
    while chunk := client.recv(65536):
        answer += chunk
    client.close()
    return answer


def test_a_client_leaving_at_any_point_of_the_start_leaves_no_kernel(
    patient_gateway: Gateway,
) -> None:
    gateway = patient_gateway
    left = 0
    for delay in (0.0, 0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1):  # a local start is quick
        client = open_request(gateway, {"KERNEL_GPU": "0.5"})
        time.sleep(delay)  # where in the start it leaves; whatever it is, nothing may stay
        answer = leave(client)
        if answer.startswith(b"HTTP/1.1 201"):  # answered before it left: its kernel, to stop
            location = re.search(rb"Location: \S*/api/kernels/(\S+)", answer)
            assert location is not None, answer
            assert gateway.delete(f"/api/kernels/{location[1].decode()}").status_code == 204
        else:
            assert answer == b"", answer
            left += 1
        wait_for_nothing_left(gateway, f"nothing left after {delay} s")
    assert left > 0  # some left before their answer
    served = gateway.start_kernel(KERNEL_GPU="1", KERNEL_WAIT="0")  # all of the device is free
    assert gateway.delete(f"/api/kernels/{served['id']}").status_code == 204


def submit(gateway: Gateway) -> str:
    response = gateway.post("/api/cumulus/jobs", JOB)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def cancel(gateway: Gateway, job_id: str) -> dict[str, Any]:
    response = gateway.delete(f"/api/cumulus/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def job_state(gateway: Gateway, job_id: str) -> str:
    return str(gateway.get(f"/api/cumulus/jobs/{job_id}").json()["state"])


def at_once(predicate: Callable[[], object], what: str) -> None:
    """Return the moment ``predicate`` holds (polling without a pause: the window between a
    kernel's process appearing and its start ending is a few milliseconds)."""
    deadline = time.monotonic() + 120
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"


# Points of a job's start to cancel at, each driven by what the gateway shows (not by time).
POINTS: dict[str, Callable[[Gateway, str], object]] = {
    "at once": lambda gateway, job_id: True,
    "a few ms in": lambda gateway, job_id: time.sleep(0.005) or True,
    "partition taken": lambda gateway, job_id: active_partitions(gateway),
    "process spawned": lambda gateway, job_id: kernel_processes(gateway),
    "running": lambda gateway, job_id: job_state(gateway, job_id) == "running",
}


@pytest.mark.timeout(600)
def test_a_job_cancelled_at_any_point_leaves_no_kernel_and_no_partition(
    patient_gateway: Gateway,
) -> None:
    gateway = patient_gateway
    cancelled = []
    for _ in range(2):
        for point, reached in POINTS.items():
            job_id = submit(gateway)
            at_once(partial(reached, gateway, job_id), f"the job's start: {point}")
            record = cancel(gateway, job_id)
            assert record["state"] == "cancelled", (point, record)
            wait_for_nothing_left(gateway, f"nothing left, cancelled {point}")
            cancelled.append(job_id)

        # queued: behind a kernel that holds the whole device
        holder = gateway.start_kernel(KERNEL_GPU="1")
        job_id = submit(gateway)
        wait_until(lambda: queue(gateway), what="the job to queue")
        assert cancel(gateway, job_id)["state"] == "cancelled"
        assert queue(gateway) == []  # it left at once
        assert len(active_partitions(gateway)) == 1
        assert gateway.delete(f"/api/kernels/{holder['id']}").status_code == 204
        wait_for_nothing_left(gateway, "nothing left, cancelled in the queue")
        cancelled.append(job_id)

    assert {job_state(gateway, j) for j in cancelled} == {"cancelled"}
    served = gateway.start_kernel(KERNEL_GPU="1", KERNEL_WAIT="0")  # all of the device is free
    assert gateway.delete(f"/api/kernels/{served['id']}").status_code == 204
