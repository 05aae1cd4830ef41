"""Device discovery failing while the gateway runs. The gateway's devices come from a device
list file (``CHRONOS_DEVICES``), which the gateway discovers again every 0.5 s here
(``--CumulusGateway.discovery_interval``); the test makes that discovery fail by removing the
file (what an NVML or driver failure looks like to the gateway: discovery raises), then lists
one device fewer (a GPU fallen off the bus), then puts the file back.

While discovery fails, the running kernel keeps running (its partition and variables kept) and
a new kernel is refused with 503 and ``Retry-After``, saying that discovery is failing and why.
A device no longer found is no failure: it is offline (``/api/cumulus/devices`` says so, no new
kernel lands on it) while the other serves new kernels; found again, it is online again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fault.conftest import assert_recovered
from tests.support.gateway import Gateway
from tests.support.kernel_ws import printed
from tests.support.wait import wait_until

pytestmark = [pytest.mark.fault, pytest.mark.timeout(180)]

DEVICES = [{"name": f"dev{i}", "vendor": "other", "memory_bytes": 2**34} for i in range(2)]
FAILING = "Device discovery on the gateway is failing"


@pytest.fixture
def device_list(tmp_path: Path) -> Path:
    path = tmp_path / "devices.json"
    path.write_text(json.dumps(DEVICES))
    return path


@pytest.fixture
def gateway(tmp_path: Path, device_list: Path) -> Iterator[Gateway]:
    gw = Gateway(
        tmp_path / "state" / "chronos.sqlite3", tmp_path / "gateway.log",
        "--CumulusGateway.discovery_interval=0.5", env={"CHRONOS_DEVICES": str(device_list)},
    )  # fmt: skip
    try:
        yield gw
    finally:
        gw.stop()


def run(gateway: Gateway, kernel_id: str, code: str) -> str:
    return printed(gateway.url, gateway.token, kernel_id, code)


def new_kernel(gateway: Gateway) -> httpx.Response:
    """A new kernel's answer; a kernel that did start is deleted again at once."""
    response = gateway.post("/api/kernels", {"name": "cumulus-gpu", "env": {"KERNEL_GPU": "0.2"}})
    if response.status_code == 201:
        assert gateway.delete(f"/api/kernels/{response.json()['id']}").status_code == 204
    return response


def refused(gateway: Gateway, saying: str = FAILING) -> httpx.Response | None:
    """The 503 a new kernel gets once its message says ``saying``; None before."""
    response = new_kernel(gateway)
    return response if response.status_code == 503 and saying in response.text else None


def test_discovery_failing_refuses_new_kernels_keeps_running_ones_and_recovers(
    gateway: Gateway, device_list: Path
) -> None:
    running = gateway.start_kernel(KERNEL_GPU="0.3")
    assert run(gateway, running["id"], "x = 5\nprint(x)") == "5\n"

    device_list.unlink()  # discovery now raises
    answer = wait_until(lambda: refused(gateway), 60, "new kernels to be refused")
    assert answer is not None
    assert FAILING in answer.json()["message"]
    assert "Cannot read device list" in answer.json()["message"]
    assert answer.json()["reason"] == "Unavailable"
    assert int(answer.headers["Retry-After"]) >= 1
    assert run(gateway, running["id"], "print(x + 1)") == "6\n"  # the running kernel runs on

    device_list.write_text(json.dumps(DEVICES[:1]))  # readable again, one device short
    wait_until(lambda: online(gateway) == [True, False], 60, "gpu1 to be offline")
    wait_until(lambda: new_kernel(gateway).status_code == 201, 60, "new kernels to start again")
    on_gpu0 = gateway.start_kernel(KERNEL_GPU="0.2")
    assert on_gpu0["cumulus"]["device"] == "gpu0"  # not the offline gpu1
    assert run(gateway, on_gpu0["id"], "print('served')") == "served\n"
    held = {p["id"] for p in gateway.get("/api/cumulus/partitions").json()}
    assert held == {running["cumulus"]["partition_id"], on_gpu0["cumulus"]["partition_id"]}
    assert "Device gpu1 (dev1) is no longer found: offline" in gateway.log()

    device_list.write_text(json.dumps(DEVICES))  # every device found again
    wait_until(lambda: online(gateway) == [True, True], 60, "gpu1 to be online again")
    assert run(gateway, running["id"], "print(x + 2)") == "7\n"
    assert "Device discovery works again" in gateway.log()
    assert "Device gpu1 (dev1) is found again: online" in gateway.log()
    assert_recovered(gateway)


def online(gateway: Gateway) -> list[bool]:
    return [d["online"] for d in gateway.get("/api/cumulus/devices").json()]
