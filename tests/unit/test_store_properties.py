"""Property tests: under any sequence of create / release / expire, no device is over-committed
and the store agrees with a simple model of what should be held."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from chronos import Device, GpuAmount, PartitionEnded, ResourceExhausted, Store, Vendor

pytestmark = pytest.mark.unit

AMOUNTS = st.sampled_from(
    ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1", "2", "3"]
)
DEVICES = [
    Device(index=i, name=f"d{i}", vendor=Vendor.OTHER, kind="gpu", memory_bytes=10 * 2**30)
    for i in range(3)
]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Partitions(RuleBasedStateMachine):
    ids = Bundle("ids")

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.clock = Clock()
        self.store = Store(DEVICES, Path(self.dir.name) / "s.sqlite3", clock=self.clock)
        self.model: dict[
            str, tuple[tuple[int, ...], int, float]
        ] = {}  # id -> devices, tenths, expiry

    def held(self) -> dict[int, int]:
        totals: dict[int, int] = {}
        for devices, per_device, expires in self.model.values():
            if expires > self.clock.now:
                for d in devices:
                    totals[d] = totals.get(d, 0) + per_device
        return totals

    @rule(
        target=ids,
        amount=AMOUNTS,
        duration=st.integers(60, 600),
        device=st.sampled_from([None, "0", "1", "2", "0,2"]),
    )
    def create(self, amount: str, duration: int, device: str | None) -> str:
        gpu = GpuAmount.parse(amount)
        candidates = [0, 1, 2] if device is None else [int(x) for x in device.split(",")]
        held = self.held()
        if gpu.is_fraction:
            fits = any(10 - held.get(d, 0) >= gpu.tenths for d in candidates)
        else:
            fits = sum(held.get(d, 0) == 0 for d in candidates) >= gpu.device_count
        try:
            partition = self.store.create(amount, duration, devices=device)
        except ResourceExhausted:
            assert not fits, f"{amount} should have fitted on {candidates}, held {held}"
            return "p-none"
        except Exception as exc:  # InvalidArgument: more devices than candidates
            assert gpu.device_count > len(candidates), exc
            return "p-none"
        assert fits
        self.model[partition.id] = (partition.devices, gpu.tenths_per_device, partition.expires_at)
        return partition.id

    @rule(pid=consumes(ids))
    def release(self, pid: str) -> None:
        live = pid in self.model and self.model[pid][2] > self.clock.now
        try:
            self.store.release(pid)
        except PartitionEnded:
            assert not live
            return
        except Exception:
            assert pid == "p-none"
            return
        assert live
        del self.model[pid]

    @rule(seconds=st.integers(1, 400))
    def time_passes(self, seconds: int) -> None:
        self.clock.now += seconds

    @rule()
    def reap(self) -> None:
        reaped = set(self.store.reap())
        expected = {p for p, (_, _, e) in self.model.items() if e <= self.clock.now}
        assert reaped <= expected
        for p in expected:
            self.model.pop(p)

    @invariant()
    def never_over_committed(self) -> None:
        used = self.store.used()
        assert all(0 <= tenths <= 10 for tenths in used.values()), used
        assert used == {d: t for d, t in self.held().items() if t}

    @invariant()
    def listed_partitions_match_the_model(self) -> None:
        listed = {p.id for p in self.store.partitions()}
        assert listed == {p for p, (_, _, e) in self.model.items() if e > self.clock.now}

    def teardown(self) -> None:
        self.store.close()
        self.dir.cleanup()


Partitions.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
TestPartitions = Partitions.TestCase
