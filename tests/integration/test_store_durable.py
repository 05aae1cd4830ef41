"""The SQLite store shared by real processes: races, durability, corrupt and locked files."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from chronos import Device, NotFound, PartitionEnded, StateUnavailable, Store

pytestmark = pytest.mark.integration

RACER = """
import json, sys, time
from chronos import Store, discover, ResourceExhausted
path, start_at = sys.argv[1], float(sys.argv[2])
store = Store(discover({}), path)
while time.time() < start_at:   # line up so the creates really overlap
    time.sleep(0.001)
try:
    p = store.create("0.1", "1h", devices="0", owner="racer")
    print(json.dumps({"won": p.id}))
except ResourceExhausted as exc:
    print(json.dumps({"lost": str(exc)}))
"""


def test_twenty_processes_racing_for_a_tenth_exactly_ten_win(
    state_path: Path, host_devices: list[Device]
) -> None:
    import time

    Store(host_devices, state_path).close()  # create the schema once, as a running host would have
    start_at = time.time() + 3
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(state_path), str(start_at)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(20)
    ]
    results = []
    for proc in racers:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        results.append(json.loads(out))
    won = [r["won"] for r in results if "won" in r]
    lost = [r["lost"] for r in results if "lost" in r]
    assert len(won) == 10 and len(set(won)) == 10
    assert len(lost) == 10 and all("no device has 0.1 free" in m for m in lost)
    with Store(host_devices, state_path) as store:
        assert store.used() == {0: 10}
        assert {p.id for p in store.partitions()} == set(won)


def test_racing_on_a_fresh_file_creates_the_schema_once(state_path: Path) -> None:
    code = "import sys; from chronos import Store, discover; Store(discover({}), sys.argv[1]).create('0.1', 90, devices='0')"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(state_path)]) for _ in range(6)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 6


def test_a_partition_outlives_the_process_that_made_it(
    state_path: Path, host_devices: list[Device]
) -> None:
    code = "import sys; from chronos import Store, discover; print(Store(discover({}), sys.argv[1]).create('0.4', '2h', owner='ana').id)"
    made = subprocess.run(
        [sys.executable, "-c", code, str(state_path)], capture_output=True, text=True, check=True
    )
    partition_id = made.stdout.strip()
    with Store(host_devices, state_path) as store:
        partition = store.get(partition_id)
        assert partition.is_active and partition.owner == "ana" and str(partition.amount) == "0.4"
        assert store.used() == {partition.devices[0]: 4}


def test_expired_partitions_are_reaped_by_the_next_writer(
    state_path: Path, host_devices: list[Device]
) -> None:
    now = [1_000.0]
    with Store(host_devices, state_path, clock=lambda: now[0]) as store:
        old = store.create("0.9", 60)
        now[0] += 61
        fresh = store.create("0.9", 60)  # fits only because the old one was reaped first
        assert store.get(old.id).state.value == "expired"
        assert store.get(old.id).ended_at == old.expires_at
        assert [p.id for p in store.partitions()] == [fresh.id]
        with pytest.raises(PartitionEnded, match=f"Partition {old.id} was already expired at"):
            store.release(old.id)


def test_release_twice_and_unknown_ids(store: Store) -> None:
    partition = store.create("0.2", "1h")
    store.release(partition.id)
    with pytest.raises(PartitionEnded, match="was already released"):
        store.release(partition.id)
    with pytest.raises(NotFound, match="Unknown partition: p-000000000000"):
        store.release("p-000000000000")


def test_a_corrupt_state_file_is_refused_without_being_touched(
    tmp_path: Path, host_devices: list[Device]
) -> None:
    path = tmp_path / "state.sqlite3"
    garbage = b"this is not a database" * 100
    path.write_bytes(garbage)
    with pytest.raises(
        StateUnavailable, match=f"State file {path} is corrupt or not a Chronos store"
    ):
        Store(host_devices, path)
    assert path.read_bytes() == garbage


def test_a_foreign_sqlite_file_is_refused(tmp_path: Path, host_devices: list[Device]) -> None:
    path = tmp_path / "other.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (x)")
    with pytest.raises(StateUnavailable, match="is not a Chronos store of schema"):
        Store(host_devices, path)


def test_a_locked_state_file_fails_clearly_and_changes_nothing(
    state_path: Path, host_devices: list[Device]
) -> None:
    with Store(host_devices, state_path) as store:
        before = store.create("0.5", "1h")
    holder = sqlite3.connect(state_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the writer lock
    try:
        with Store(host_devices, state_path, lock_timeout=0.2) as store:
            with pytest.raises(StateUnavailable, match="is locked by another process"):
                store.create("0.1", "1h")
            with pytest.raises(StateUnavailable, match="is locked"):
                store.release(before.id)
            assert [p.id for p in store.partitions()] == [before.id]  # readers still read (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with Store(host_devices, state_path) as store:
        assert [p.id for p in store.partitions()] == [before.id]
        assert store.used() == {before.devices[0]: 5}


def test_the_state_dir_is_created(tmp_path: Path, host_devices: list[Device]) -> None:
    path = tmp_path / "a" / "b" / "c.sqlite3"
    with Store(host_devices, path) as store:
        store.create("0.1", "1h")
    assert path.exists()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
