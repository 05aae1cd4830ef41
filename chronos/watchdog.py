"""The last enforcement layer: stop processes that outlive their partition or exceed its cap.

Each tick the watchdog reaps expired partitions, then looks at every partition that still has
processes recorded against it:

- ended (expired or released): its process trees get SIGTERM, then SIGKILL after the grace
  period;
- active, with a memory monitor: a tree holding more than the partition's cap on one of its
  devices, or any memory on a device outside it, is stopped the same way (the partition stays,
  so its owner can start again within the cap).

Processes are identified by PID *and* start time, so a recycled PID is never signalled.
NVML reports host PIDs, which is what the store records.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import psutil

from chronos.monitor import MemoryMonitor, ProcessUsage
from chronos.partition import Partition, ProcessRef, format_bytes
from chronos.store import Store

DEFAULT_GRACE_S = 5.0
DEFAULT_INTERVAL_S = 2.0
_START_TIME_TOLERANCE_S = 0.05


class EventKind(StrEnum):
    REAPED = "reaped"  # a partition passed its expiry and was marked expired
    TERMINATED = "terminated"  # a process stopped after SIGTERM
    KILLED = "killed"  # a process ignored SIGTERM for the grace period: SIGKILL
    GONE = "gone"  # a recorded process had already exited; record dropped


@dataclass(frozen=True)
class WatchdogEvent:
    kind: EventKind
    partition_id: str
    pid: int | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        who = f"pid {self.pid} of " if self.pid is not None else ""
        return f"{self.kind.value}: {who}{self.partition_id}" + (
            f" ({self.reason})" if self.reason else ""
        )


def live_process(ref: ProcessRef) -> psutil.Process | None:
    """The process ``ref`` names if it still runs (same PID *and* start time), else None."""
    try:
        proc = psutil.Process(ref.pid)
        if abs(proc.create_time() - ref.started) > _START_TIME_TOLERANCE_S:
            return None
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return [proc]


class Watchdog:
    """Enforces expiry and memory caps for the partitions in ``store``."""

    def __init__(
        self,
        store: Store,
        monitor: MemoryMonitor | None = None,
        *,
        grace: float = DEFAULT_GRACE_S,
    ) -> None:
        self.store = store
        self.monitor = monitor
        self.grace = grace
        self._uuids = {d.index: d.uuid for d in store.devices}

    def tick(self) -> list[WatchdogEvent]:
        """One pass: reap, find violators, stop them. Returns what happened."""
        events = [WatchdogEvent(EventKind.REAPED, pid) for pid in self.store.reap()]
        usage = self._usage_by_pid()
        victims: list[tuple[Partition, psutil.Process, str]] = []
        for partition in self.store.with_processes():
            for ref in partition.processes:
                proc = live_process(ref)
                if proc is None:
                    self.store.forget_process(partition.id, ref.pid)
                    events.append(WatchdogEvent(EventKind.GONE, partition.id, ref.pid))
                    continue
                reason = self._violation(partition, proc, usage)
                if reason:
                    victims.append((partition, proc, reason))
        events += self._stop(victims)
        return events

    def _usage_by_pid(self) -> dict[int, list[ProcessUsage]]:
        found: dict[int, list[ProcessUsage]] = defaultdict(list)
        for reading in self.monitor.usage() if self.monitor is not None else ():
            found[reading.pid].append(reading)
        return found

    def _violation(
        self, partition: Partition, proc: psutil.Process, usage: dict[int, list[ProcessUsage]]
    ) -> str:
        if not partition.is_active:
            return f"partition {partition.state.value}"
        held: dict[str | None, int] = defaultdict(int)
        for member in _tree(proc):
            for reading in usage.get(member.pid, ()):
                held[reading.device_uuid] += reading.bytes
        allowed = {self._uuids.get(i) for i in partition.devices}
        for uuid, total in held.items():
            if uuid is not None and uuid not in allowed and total > 0:
                return f"uses device {uuid} outside its partition"
            if total > partition.memory_bytes:
                return (
                    f"holds {format_bytes(total)} of device memory, over its cap of "
                    f"{format_bytes(partition.memory_bytes)}"
                )
        return ""

    def _stop(
        self, victims: Iterable[tuple[Partition, psutil.Process, str]]
    ) -> list[WatchdogEvent]:
        owners: dict[int, tuple[str, str]] = {}
        members: list[psutil.Process] = []
        roots: list[tuple[str, psutil.Process]] = []
        for partition, root, reason in victims:
            roots.append((partition.id, root))
            for member in _tree(root):
                if member.pid not in owners:
                    owners[member.pid] = (partition.id, reason)
                    members.append(member)
                    _signal(member.terminate)
        gone, alive = _wait_gone(members, self.grace)
        for member in alive:
            _signal(member.kill)
        _wait_gone(alive, self.grace)
        for partition_id, root in roots:
            if _finished(root):
                self.store.forget_process(partition_id, root.pid)
        return [
            WatchdogEvent(kind, owners[p.pid][0], p.pid, owners[p.pid][1])
            for kind, procs in ((EventKind.TERMINATED, gone), (EventKind.KILLED, alive))
            for p in procs
        ]

    def run(
        self,
        stop: threading.Event,
        interval: float = DEFAULT_INTERVAL_S,
        on_event: Callable[[WatchdogEvent], None] = lambda event: None,
    ) -> None:
        """Tick every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            for event in self.tick():
                on_event(event)
            stop.wait(interval)


def _finished(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(
    procs: list[psutil.Process], timeout: float
) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """Wait up to ``timeout`` for ``procs`` to end; returns (gone, alive). A zombie counts as
    gone: its parent, not the watchdog, collects it."""
    deadline = time.monotonic() + timeout
    pending = list(procs)
    while True:
        pending = [proc for proc in pending if not _finished(proc)]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    return [proc for proc in procs if proc not in pending], pending


def _signal(send: Callable[[], None]) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        send()
