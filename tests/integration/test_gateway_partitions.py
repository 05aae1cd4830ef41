"""Capacity, queueing and expiry through a real gateway."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest

from chronos import Store, discover
from tests.support.gateway import Gateway, set_expiry
from tests.support.kernel_ws import KernelSocket
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


def test_no_wait_requests_get_429_with_retry_after(gateway: Gateway) -> None:
    first = gateway.start_kernel(KERNEL_GPU="0.6")
    refused = gateway.post("/api/kernels", {"env": {"KERNEL_GPU": "0.6", "KERNEL_WAIT": "0"}})
    assert refused.status_code == 429
    assert refused.json()["message"] == "no device has 0.6 free (largest free: 0.4 on gpu0)"
    assert 3000 < int(refused.headers["Retry-After"]) <= 3600  # the first partition's expiry
    assert gateway.get("/api/kernels").json()[0]["id"] == first["id"]
    assert len(gateway.get("/api/cumulus/partitions").json()) == 1


def test_queued_request_starts_when_capacity_frees_and_never_over_commits(gateway: Gateway) -> None:
    first = gateway.start_kernel(KERNEL_GPU="0.6")
    result: dict[str, httpx.Response] = {}

    def queued() -> None:
        result["r"] = gateway.post(
            "/api/kernels", {"env": {"KERNEL_GPU": "0.5", "KERNEL_USERNAME": "bo"}}
        )

    waiter = threading.Thread(target=queued)
    waiter.start()
    queue = wait_until(
        lambda: gateway.get("/api/cumulus/queue").json(), what="the request to queue"
    )
    assert queue[0]["position"] == 1 and queue[0]["owner"] == "bo" and queue[0]["amount"] == 0.5
    assert "largest free: 0.4" in queue[0]["waiting_for"]
    assert 3000 < queue[0]["eta_s"] <= 3600  # estimated start: when the first one expires
    assert gateway.get("/api/cumulus/devices").json()[0]["free"] == pytest.approx(0.4)

    assert gateway.delete(f"/api/kernels/{first['id']}").status_code == 204
    waiter.join(timeout=120)
    second = result["r"]
    assert second.status_code == 201, second.text
    assert second.json()["cumulus"]["amount"] == 0.5
    assert gateway.get("/api/cumulus/queue").json() == []
    assert gateway.get("/api/cumulus/devices").json()[0]["free"] == pytest.approx(0.5)


def test_a_queued_request_times_out_with_504_and_leaves_nothing(gateway: Gateway) -> None:
    gateway.start_kernel(KERNEL_GPU="0.9")
    response = gateway.post(
        "/api/kernels", {"env": {"KERNEL_GPU": "0.2", "KERNEL_LAUNCH_TIMEOUT": "1"}}
    )
    assert response.status_code == 504
    assert response.json()["message"].startswith("waited 1 s in the queue for 0.2 GPU")
    assert gateway.get("/api/cumulus/queue").json() == []
    assert len(gateway.get("/api/cumulus/partitions").json()) == 1


def test_expiry_warns_then_stops_the_kernel_and_releases_the_partition(gateway: Gateway) -> None:
    model = gateway.start_kernel(KERNEL_GPU="0.5", KERNEL_DURATION="1h")
    partition_id = model["cumulus"]["partition_id"]

    async def run() -> list[dict[str, Any]]:
        ws = await KernelSocket.open(gateway.url, gateway.token, model["id"], "v1")
        try:
            assert (await ws.execute("x = 1")).reply["status"] == "ok"
            set_expiry(gateway, partition_id, 250)  # inside the 5-minute warning
            warned = await ws.wait_for(lambda m: m["msg_type"] == "cumulus")
            stderr = await ws.wait_for(lambda m: m["msg_type"] == "stream")
            set_expiry(gateway, partition_id, 50)  # inside the 1-minute warning
            second = await ws.wait_for(lambda m: m["msg_type"] == "cumulus")
            set_expiry(gateway, partition_id, -1)  # time is up
            expired = await ws.wait_for(lambda m: m["msg_type"] == "cumulus")
            return [warned, stderr, second, expired]
        finally:
            await ws.close()

    warned, stderr, second, expired = asyncio.run(run())
    assert (
        warned["content"]["event"] == "expiry_warning"
        and warned["content"]["partition"]["partition_id"] == partition_id
    )
    assert (
        stderr["content"]["name"] == "stderr"
        and f"partition {partition_id}" in stderr["content"]["text"]
    )
    assert "expires in 4m" in stderr["content"]["text"]
    assert (
        second["content"]["event"] == "expiry_warning" and second["content"]["seconds_left"] <= 60
    )
    assert expired["content"]["event"] == "expired"

    gone = wait_until(
        lambda: (r := gateway.get(f"/api/kernels/{model['id']}")).status_code == 410 and r,
        what="410",
    )
    assert f"Partition {partition_id} (0.5 GPU on gpu0) expired" in gone.json()["message"]
    assert gateway.get("/api/kernels").json() == []
    with Store(discover({}), gateway.state) as store:
        assert store.get(partition_id).state.value == "expired"


def test_releasing_the_partition_from_outside_stops_the_kernel(gateway: Gateway) -> None:
    model = gateway.start_kernel()
    with Store(discover({}), gateway.state) as store:
        store.release(model["cumulus"]["partition_id"], "operator")
    gone = wait_until(
        lambda: (r := gateway.get(f"/api/kernels/{model['id']}")).status_code == 410 and r,
        what="410",
    )
    assert "was released" in gone.json()["message"]
