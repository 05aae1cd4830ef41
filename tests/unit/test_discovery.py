"""Devices found and lost while the gateway runs, against a real Chronos store on a temporary
SQLite file: a device discovered for the first time is appended under a new index and takes
partitions at once; one no longer found is offline (nothing new is cut from it, every other
device serves on, partitions on it stay); found again, it is online under its own index.
Discovery that raises still refuses every new kernel (503), and the queue never plans on an
offline device."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from chronos import Device, ResourceExhausted, Store, Vendor
from chronos.device import identities, reconcile
from cumulus_jupyter.errors import Unavailable
from gateway.broker import PartitionBroker, PartitionRequest
from gateway.discovery import DeviceDiscovery

pytestmark = pytest.mark.unit

LOG = logging.getLogger("test.discovery")


def gpu(name: str, host: str | None = None, uuid: str | None = None) -> Device:
    """As discovery reports it: numbered in the order found (the store renumbers new ones)."""
    return Device(0, name, Vendor.NVIDIA, "gpu", 80 * 2**30, uuid=uuid, host=host)


def numbered(devices: Sequence[Device]) -> list[Device]:
    return [replace(d, index=i) for i, d in enumerate(devices)]


A = gpu("H100", "node-a", "GPU-a")
B = gpu("H100", "node-b", "GPU-b")
C = gpu("A100", "node-c", "GPU-c")


class Found:
    """What the next discovery answers; an exception to raise instead."""

    def __init__(self, devices: Sequence[Device]) -> None:
        self.devices: Sequence[Device] | Exception = devices

    def __call__(self) -> Sequence[Device]:
        if isinstance(self.devices, Exception):
            raise self.devices
        return numbered(self.devices)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(numbered([A, B]), tmp_path / "chronos.sqlite3") as opened:
        yield opened


Discover = Callable[[Sequence[Device] | Exception], DeviceDiscovery]


@pytest.fixture
def found() -> Found:
    return Found([A, B])


@pytest.fixture
def discovery(store: Store, found: Found) -> DeviceDiscovery:
    return DeviceDiscovery(found, store, LOG, interval_s=30)


@pytest.fixture
def rediscover(found: Found, discovery: DeviceDiscovery) -> Discover:
    """Run one discovery that finds the given devices (or raises), as the supervisor would."""

    def run(devices: Sequence[Device] | Exception) -> DeviceDiscovery:
        found.devices = devices
        asyncio.run(discovery.run())
        return discovery

    return run


def ids(store: Store) -> list[tuple[str, str | None, bool]]:
    return [(d.id, d.host, store.is_online(d.index)) for d in store.devices]


def test_a_device_found_while_running_is_appended_and_takes_partitions(
    store: Store, rediscover: Discover
) -> None:
    store.create("1", "1h", devices="gpu0")
    store.create("1", "1h", devices="gpu1")
    with pytest.raises(ResourceExhausted):
        store.create("0.5", "1h")
    rediscover([C, A, B])  # the new node sorts first: the known ones keep their numbers anyway
    assert ids(store) == [("gpu0", "node-a", True), ("gpu1", "node-b", True),
                          ("gpu2", "node-c", True)]  # fmt: skip
    assert store.create("0.5", "1h").devices == (2,)


def test_a_device_not_found_is_offline_and_the_others_serve_on(
    store: Store, rediscover: Discover
) -> None:
    on_b = store.create("0.5", "1h", devices="gpu1")
    discovery = rediscover([A])
    assert ids(store) == [("gpu0", "node-a", True), ("gpu1", "node-b", False)]
    discovery.check()  # a missing device is no failure: new kernels start
    for _ in range(4):  # 0.2 each: 0.8 in all, and every one on gpu0
        assert store.create("0.2", "1h").devices == (0,)
    with pytest.raises(ResourceExhausted, match="gpu1 not found by the last discovery"):
        store.create("0.1", "1h", devices="gpu1")
    assert [p.id for p in store.partitions() if p.devices == (1,)] == [on_b.id]  # it stays


def test_an_offline_device_found_again_is_online_under_its_own_index(
    store: Store, rediscover: Discover, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOG.name)
    rediscover([B])
    rediscover([C, B])
    rediscover([B, A, C])
    assert ids(store) == [("gpu0", "node-a", True), ("gpu1", "node-b", True),
                          ("gpu2", "node-c", True)]  # fmt: skip
    assert store.create("1", "1h", devices="gpu0").devices == (0,)
    events = [(r.__dict__["event"], r.__dict__["device"]) for r in caplog.records]
    assert events == [("device_offline", "gpu0"), ("device_added", "gpu2"),
                      ("device_online", "gpu0")]  # fmt: skip


def test_discovery_that_raises_refuses_new_kernels_until_it_works_again(
    store: Store, rediscover: Discover
) -> None:
    discovery = rediscover(RuntimeError("NVML: driver not loaded"))
    with pytest.raises(Unavailable, match="NVML: driver not loaded") as refused:
        discovery.check()
    assert refused.value.retry_after == 30
    assert ids(store) == [("gpu0", "node-a", True), ("gpu1", "node-b", True)]  # nothing known
    rediscover([A])
    discovery.check()
    assert ids(store) == [("gpu0", "node-a", True), ("gpu1", "node-b", False)]


def test_discovery_finding_nothing_leaves_every_device_offline_not_failing(
    store: Store, rediscover: Discover
) -> None:
    rediscover([]).check()
    with pytest.raises(ResourceExhausted, match="gpu0, gpu1 not found"):
        store.create("0.1", "1h")


def test_the_states_go_to_the_metrics_hook(store: Store) -> None:
    seen: list[list[tuple[str, bool]]] = []
    found = Found([B])
    discovery = DeviceDiscovery(found, store, LOG, on_states=seen.append)
    asyncio.run(discovery.run())
    assert seen == [[("gpu0", True), ("gpu1", True)], [("gpu0", False), ("gpu1", True)]]


def test_the_queue_never_plans_on_an_offline_device_and_a_new_one_serves_it(
    store: Store, found: Found, discovery: DeviceDiscovery
) -> None:
    broker = PartitionBroker(store)

    async def run() -> None:
        await broker.acquire(PartitionRequest.parse("1", "1h", "a", "gpu0"))
        b = await broker.acquire(PartitionRequest.parse("0.8", "1h", "b", "gpu1"))
        waiting = asyncio.ensure_future(
            broker.acquire(PartitionRequest.parse("0.5", "1h", "c", None), timeout=60)
        )
        while broker.queue_length < 1:
            await asyncio.sleep(0)
        found.devices = [A]
        await discovery.run()
        broker.release(b.id)  # gpu1 is all free now, but offline: c waits on
        assert not waiting.done() and broker.queue_length == 1
        [entry] = broker.queue()
        assert entry["waiting_for"] == "no device has 0.5 free (largest free: 0 on gpu0)"
        assert entry["eta_s"] == 3600.0  # when gpu0 frees: gpu1 is not counted on
        found.devices = [A, C]  # a new node: c goes there
        await discovery.run()
        broker.pump()
        assert (await asyncio.wait_for(waiting, 5)).devices == (2,)

    asyncio.run(run())


def test_identities_are_uuid_then_bus_id_then_name_and_order_per_host() -> None:
    plain = Device(0, "pthread-cpu", Vendor.OTHER, "cpu", 2**30)
    bus = Device(1, "GPU", Vendor.AMD, "gpu", 2**30, pci_bus_id="00000000:01:00.0", host="h")
    other = Device(3, "pthread-cpu", Vendor.OTHER, "cpu", 1, host="h")
    assert identities([A, bus, plain, plain, other]) == [
        ("uuid", "GPU-a"),
        ("h", "pci", "00000000:01:00.0"),
        ("", "name", "pthread-cpu", "0"),
        ("", "name", "pthread-cpu", "1"),
        ("h", "name", "pthread-cpu", "0"),
    ]


def test_a_gpu_found_on_a_new_node_keeps_its_index_and_goes_there(
    store: Store, rediscover: Discover
) -> None:
    rediscover([A, replace(B, host="node-b-rejoined")])  # a new node id, the same GPU
    assert ids(store) == [("gpu0", "node-a", True), ("gpu1", "node-b-rejoined", True)]


def test_reconcile_appends_and_never_renumbers() -> None:
    known = numbered([A, B])
    changed = reconcile(known, numbered([C, B]))
    assert changed.devices[:2] == tuple(known)
    assert changed.devices[2].index == 2 and changed.devices[2].uuid == "GPU-c"
    assert changed.added == (2,) and changed.offline == {0}
    assert reconcile(changed.devices, numbered([A, B, C])).offline == frozenset()
