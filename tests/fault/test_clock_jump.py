"""The wall clock jumping ±1 h under a running gateway: partitions expire neither early nor
late. The gateway's process gets a wall clock the test steps (``wallclock/sitecustomize.py``,
a faketime-like shim; the machine's clock is never changed); expiries follow the gateway's
`gateway.clock.SteadyClock`, which steps do not move.

Two kernels with 10 minutes each. Kernel A's partition is made to end in 3 s and the clock
jumps 1 h ahead: A is stopped when its time comes (the supervisor ran on the stepped clock)
while B, with minutes left, runs on. Then the clock jumps to 1 h behind and B's partition is
made to end in 3 s: B is stopped then, not an hour later."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fault.conftest import assert_recovered
from tests.support.gateway import Gateway, set_expiry
from tests.support.wait import wait_until

pytestmark = [pytest.mark.fault, pytest.mark.timeout(180)]

HOUR = 3600.0


@pytest.fixture
def offset(tmp_path: Path) -> Path:
    path = tmp_path / "clock-offset"
    path.write_text("0")
    return path


@pytest.fixture
def stepped_gateway(tmp_path: Path, offset: Path) -> Iterator[Gateway]:
    env = {
        "PYTHONPATH": str(Path(__file__).with_name("wallclock")),
        "CUMULUS_FAULT_CLOCK_OFFSET": str(offset),
    }
    gw = Gateway(tmp_path / "state" / "chronos.sqlite3", tmp_path / "gateway.log", env=env)
    try:
        yield gw
    finally:
        gw.stop()


def ended(gateway: Gateway, kernel_id: str) -> str | None:
    """Why the kernel ended (its 410's message), or None while it runs."""
    response = gateway.get(f"/api/kernels/{kernel_id}")
    return str(response.json()["message"]) if response.status_code == 410 else None


def test_the_wall_clock_jumping_an_hour_either_way_neither_ends_nor_keeps_a_partition(
    stepped_gateway: Gateway, offset: Path
) -> None:
    gateway = stepped_gateway
    a = gateway.start_kernel(KERNEL_GPU="0.2", KERNEL_DURATION="10m")
    b = gateway.start_kernel(KERNEL_GPU="0.2", KERNEL_DURATION="10m")
    set_expiry(gateway, a["cumulus"]["partition_id"], 3)

    offset.write_text(str(+HOUR))
    reason = wait_until(lambda: ended(gateway, a["id"]), 60, "kernel A's partition to expire")
    assert reason is not None and "expired" in reason
    assert ended(gateway, b["id"]) is None  # an hour ahead, yet B still has its minutes
    [held] = gateway.get("/api/cumulus/partitions").json()
    assert held["id"] == b["cumulus"]["partition_id"] and held["state"] == "active"

    offset.write_text(str(-HOUR))
    set_expiry(gateway, b["cumulus"]["partition_id"], 3)
    reason = wait_until(lambda: ended(gateway, b["id"]), 60, "kernel B's partition to expire")
    assert reason is not None and "expired" in reason
    assert gateway.get("/api/cumulus/partitions").json() == []
    assert "The system clock is +3600 s from the gateway's steady clock" in gateway.log()
    assert "The system clock is -3600 s from the gateway's steady clock" in gateway.log()
    offset.write_text("0")
    assert_recovered(gateway)
