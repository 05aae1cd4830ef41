"""The store's device table, kept in its SQLite file: a store opened again (a restarted gateway,
the ``chronos`` CLI) matches what it discovers against the devices the file has known, so no
device is renumbered under the partitions that refer to it. Real Store, temporary SQLite files."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from chronos import Device, InvalidArgument, ResourceExhausted, Store, Vendor
from cumulus_jupyter import errors
from gateway import metrics
from gateway.broker import PartitionBroker, PartitionRequest

pytestmark = pytest.mark.unit


def gpu(name: str, host: str | None = None, uuid: str | None = None) -> Device:
    return Device(0, name, Vendor.NVIDIA, "gpu", 80 * 2**30, uuid=uuid, host=host)


def ran_once(devices: Sequence[Device], path: Path) -> None:
    """A gateway that opened the state file with these devices found, then stopped."""
    Store(devices, path).close()


def found(*devices: Device) -> list[Device]:
    """As a discovery reports them: numbered in the order found."""
    return [replace(d, index=i) for i, d in enumerate(devices)]


def ids(store: Store) -> dict[str, str | None]:
    return {d.id: d.uuid for d in store.devices}


A = gpu("H100", "node-a", "GPU-a")
B = gpu("H100", "node-b", "GPU-b")
C = gpu("A100", "node-c", "GPU-c")
PLAIN = Device(0, "pthread-cpu", Vendor.OTHER, "cpu", 2**30)  # no UUID, no bus id


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "chronos.sqlite3"


def test_a_fresh_file_numbers_devices_in_discovery_order(path: Path) -> None:
    with Store(found(B, A), path) as store:
        assert ids(store) == {"gpu0": "GPU-b", "gpu1": "GPU-a"}
        assert store.offline == frozenset()


def test_reopened_with_the_same_devices_they_keep_their_ids(path: Path) -> None:
    with Store(found(A, B), path) as store:
        partition = store.create("0.5", "1h", devices="gpu1")
    with Store(found(A, B), path) as store:
        assert ids(store) == {"gpu0": "GPU-a", "gpu1": "GPU-b"}
        assert store.get(partition.id).devices == (1,)
        assert store.used() == {1: 5}


def test_reopened_with_the_devices_found_in_another_order_nothing_is_renumbered(
    path: Path,
) -> None:
    with Store(found(A, B), path) as store:
        on_b = store.create("0.5", "1h", devices="gpu1")
    with Store(found(B, A), path) as store:  # B answers first this time
        assert ids(store) == {"gpu0": "GPU-a", "gpu1": "GPU-b"}
        assert store.devices[store.get(on_b.id).devices[0]].uuid == "GPU-b"


def test_a_device_missing_at_reopen_is_offline_and_the_others_keep_their_ids(
    path: Path,
) -> None:
    with Store(found(A, B, C), path) as store:
        on_b = store.create("0.3", "1h", devices="gpu1")
    with Store(found(A, C), path) as store:
        assert ids(store) == {"gpu0": "GPU-a", "gpu1": "GPU-b", "gpu2": "GPU-c"}
        assert store.offline == frozenset({1})
        assert store.get(on_b.id).devices == (1,)  # left as it was
        with pytest.raises(ResourceExhausted, match="gpu1 not found by the last discovery"):
            store.create("0.1", "1h", devices="gpu1")
        assert store.create("0.5", "1h", devices="gpu2").devices == (2,)
        assert store.create("1", "1h").devices == (0,)  # gpu1 is free, but offline


def test_a_device_new_at_reopen_is_appended(path: Path) -> None:
    ran_once(found(A, B), path)
    with Store(found(C, A, B), path) as store:
        assert ids(store) == {"gpu0": "GPU-a", "gpu1": "GPU-b", "gpu2": "GPU-c"}
        assert store.offline == frozenset()
        assert store.create("0.5", "1h", devices="GPU-c").devices == (2,)


def test_a_device_on_a_new_host_keeps_its_index_and_the_file_records_the_host(
    path: Path,
) -> None:
    ran_once(found(A, B), path)
    ran_once(found(A, replace(B, host="node-b2")), path)
    with Store([], path) as store:  # nothing found: what is known comes from the file alone
        assert [d.host for d in store.devices] == ["node-a", "node-b2"]
        assert store.offline == frozenset({0, 1})


def test_devices_without_uuid_or_bus_id_are_known_by_host_name_and_order(path: Path) -> None:
    ran_once(found(PLAIN, PLAIN), path)
    with Store(found(PLAIN), path) as store:
        assert [d.id for d in store.devices] == ["gpu0", "gpu1"]
        assert store.offline == frozenset({1})


def test_two_processes_sharing_the_file_never_give_one_index_to_two_devices(
    path: Path,
) -> None:
    with Store(found(A), path) as gateway, Store(found(B), path) as cli:
        assert ids(cli) == {"gpu0": "GPU-a", "gpu1": "GPU-b"} and cli.offline == {0}
        gateway.follow(found(A, C))  # C is new to the gateway, after B was recorded
        assert ids(gateway) == {"gpu0": "GPU-a", "gpu1": "GPU-b", "gpu2": "GPU-c"}
        assert gateway.offline == {1}


def test_with_every_known_device_offline_a_request_is_refused_for_capacity(
    path: Path,
) -> None:
    ran_once(found(A, B), path)
    with Store([], path) as store:  # every Swarm node away at start-up
        with pytest.raises(ResourceExhausted, match="gpu0, gpu1 not found") as refused:
            store.create("0.5", "1h")
        assert refused.value.retry_after is not None


def test_with_no_device_ever_known_a_request_is_still_invalid(path: Path) -> None:
    with Store([], path) as store, pytest.raises(InvalidArgument, match="No devices"):
        store.create("0.5", "1h")


def test_a_request_waits_for_a_known_device_to_come_back(path: Path) -> None:
    ran_once(found(A, B), path)
    with Store([], path) as store:
        broker = PartitionBroker(store)

        async def run() -> None:
            with pytest.raises(errors.ResourceExhausted, match="not found"):  # 429, not 400
                await broker.acquire(PartitionRequest.parse("0.5", "1h", "ana", None), wait=False)
            waiting = asyncio.ensure_future(
                broker.acquire(PartitionRequest.parse("0.5", "1h", "ana", None), timeout=60)
            )
            while broker.queue_length < 1:
                await asyncio.sleep(0)
            store.follow(found(B))  # node-b is back
            broker.pump()
            assert (await asyncio.wait_for(waiting, 5)).devices == (1,)

        asyncio.run(run())


def test_utilization_counts_online_devices_only() -> None:
    metrics.update_device_states([("gpu0", True), ("gpu1", False)])
    try:
        metrics.update_devices([("gpu0", 0.25), ("gpu1", 1.0)])
        assert metrics.UTILIZATION._value.get() == pytest.approx(0.75)
        metrics.update_device_states([("gpu0", False), ("gpu1", False)])
        metrics.update_devices([("gpu0", 0.25), ("gpu1", 1.0)])
        assert metrics.UTILIZATION._value.get() == 0.0
    finally:
        metrics.update_device_states([("gpu0", True), ("gpu1", True)])


# The schema as it was before the devices table (schema 1), as an older Chronos wrote it.
SCHEMA_1 = [
    """CREATE TABLE partitions (
        id TEXT PRIMARY KEY, node TEXT NOT NULL, devices TEXT NOT NULL,
        tenths INTEGER NOT NULL, memory_bytes INTEGER NOT NULL, owner TEXT NOT NULL,
        created_at REAL NOT NULL, expires_at REAL NOT NULL, state TEXT NOT NULL,
        ended_at REAL, end_reason TEXT)""",
    "CREATE INDEX partitions_state ON partitions (state, expires_at)",
    """CREATE TABLE shares (
        partition_id TEXT NOT NULL, node TEXT NOT NULL, device INTEGER NOT NULL,
        tenths INTEGER NOT NULL, PRIMARY KEY (partition_id, device))""",
    "CREATE INDEX shares_device ON shares (node, device)",
    """CREATE TABLE processes (
        partition_id TEXT NOT NULL, pid INTEGER NOT NULL, started REAL NOT NULL,
        PRIMARY KEY (partition_id, pid))""",
    "PRAGMA user_version=1",
]


def old_state_file(path: Path, partition_on: Sequence[int]) -> str:
    """A schema-1 state file holding one active partition on ``partition_on``."""
    partition_id = "p-0123456789ab"
    with sqlite3.connect(path) as db:
        for statement in SCHEMA_1:
            db.execute(statement)
        db.execute(
            "INSERT INTO partitions VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (partition_id, "local", json.dumps(list(partition_on)), 5, 2**30, "ana",
             1e12 - 60, 1e12 + 3600, "active", None, None),
        )  # fmt: skip
        db.executemany(
            "INSERT INTO shares VALUES (?,?,?,?)",
            [(partition_id, "local", i, 5) for i in partition_on],
        )
    return partition_id


def test_a_schema_1_file_opens_and_its_partitions_keep_their_devices(path: Path) -> None:
    partition_id = old_state_file(path, [1])
    with Store(found(A, B), path, clock=lambda: 1e12) as store:
        assert ids(store) == {"gpu0": "GPU-a", "gpu1": "GPU-b"}  # as that gateway numbered them
        assert store.get(partition_id).devices == (1,)
        assert store.used() == {1: 5}
        assert store.create("0.6", "1h").devices == (0,)  # gpu1 holds 0.5: 0.6 cannot fit
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    with Store(found(B), path, clock=lambda: 1e12) as store:  # the table is kept from then on
        assert ids(store) == {"gpu0": "GPU-a", "gpu1": "GPU-b"}
        assert store.offline == {0}


def test_every_field_of_a_device_comes_back_from_the_file(path: Path) -> None:
    full = Device(
        0, "RTX", Vendor.NVIDIA, "gpu", 24 * 2**30, uuid="GPU-x", pci_bus_id="00000000:01:00.0",
        opencl=(1, 2), sources=("nvml", "opencl"), host="node-x",
    )  # fmt: skip
    ran_once([full], path)
    with Store([], path) as store:
        assert store.devices == [full]
