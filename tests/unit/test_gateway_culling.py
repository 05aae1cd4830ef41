"""`DisconnectedCuller`'s bookkeeping, on the gateway's real kernel manager and services with
placeholder kernels and a clock of the test's: whose clock runs, when it restarts, who is
exempt, and the reason kept for a kernel it stops."""

from __future__ import annotations

import asyncio
import json
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cumulus_jupyter.errors import InvalidArgument
from gateway.app import build_services
from gateway.culling import DisconnectedCuller
from gateway.kernelspecs import CumulusKernelSpecManager
from gateway.manager import CumulusKernelManager

pytestmark = pytest.mark.unit

DEVICES = json.dumps([{"name": "H100", "vendor": "nvidia", "memory_bytes": 2**34, "uuid": "G-0"}])


class Kernels:
    """The kernel manager's tables the culler reads, with a shutdown that records."""

    def __init__(self, km: CumulusKernelManager) -> None:
        self.km = km
        self.stopped: list[str] = []

        async def shutdown_kernel(kernel_id: str, now: bool = False) -> None:
            self.stopped.append(kernel_id)
            del km._kernels[kernel_id]

        km.shutdown_kernel = shutdown_kernel  # type: ignore[method-assign,assignment]

    def add(self, kernel_id: str, connections: int = 0) -> None:
        self.km._kernels[kernel_id] = types.SimpleNamespace(provisioner=None)
        self.km._kernel_connections[kernel_id] = connections


@pytest.fixture
def setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[DisconnectedCuller, Kernels]]:
    monkeypatch.setenv("CHRONOS_DEVICES", DEVICES)
    km = CumulusKernelManager(
        root_dir=str(tmp_path),
        connection_dir=str(tmp_path),
        state_path=str(tmp_path / "state.sqlite3"),
        disconnected_timeout=10.0,
    )
    km.kernel_spec_manager = CumulusKernelSpecManager()
    services = build_services(km)
    yield DisconnectedCuller(services, km), Kernels(km)
    services.close()


def tick(culler: DisconnectedCuller, now: float) -> None:
    asyncio.run(culler.tick(now))


def test_a_kernel_alone_for_the_timeout_is_stopped_with_the_reason(setup: Any) -> None:
    culler, kernels = setup
    kernels.add("alone")
    kernels.add("held", connections=1)
    kernels.add("job")
    culler.services.jobs._kernel_ids.add("job")
    kernels.add("starting")
    kernels.km._pending_kernels["starting"] = None
    tick(culler, 100.0)  # the clocks start when a kernel is first seen alone
    tick(culler, 109.9)
    assert kernels.stopped == []
    tick(culler, 110.0)
    assert kernels.stopped == ["alone"]
    reason = culler.services.registry.end_reason("alone")
    assert reason == (
        "Kernel alone was stopped: no client was connected for 10s. Start a new kernel to go on."
    )
    tick(culler, 1000.0)
    assert kernels.stopped == ["alone"]  # a client, a job, a start: none of them is alone


def test_a_client_coming_back_restarts_the_clock(setup: Any) -> None:
    culler, kernels = setup
    kernels.add("flaky")
    tick(culler, 100.0)
    kernels.km._kernel_connections["flaky"] = 1
    tick(culler, 105.0)
    kernels.km._kernel_connections["flaky"] = 0
    tick(culler, 106.0)
    tick(culler, 115.9)
    assert kernels.stopped == []
    tick(culler, 116.0)
    assert kernels.stopped == ["flaky"]


def test_a_timeout_of_0_stops_nothing(setup: Any) -> None:
    culler, kernels = setup
    culler.services.settings.disconnected_timeout = 0
    kernels.add("alone")
    tick(culler, 0.0)
    tick(culler, 1e9)
    assert kernels.stopped == []


def test_a_negative_timeout_is_refused_before_anything_is_built() -> None:
    with pytest.raises(InvalidArgument, match=r"disconnected_timeout must be seconds .*not -1$"):
        CumulusKernelManager(disconnected_timeout=-1.0).settings()
