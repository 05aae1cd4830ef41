"""The watchdog against real processes: expiry on the PoCL device, memory caps through the
monitor interface, SIGKILL for processes that ignore SIGTERM, and PID reuse."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from chronos import Device, FixedMonitor, ProcessUsage, Store, Watchdog, confinement_env
from chronos.partition import ProcessRef
from chronos.watchdog import EventKind, live_process

pytestmark = pytest.mark.integration

OPENCL_WORKER = """
import sys, pyopencl as cl, numpy as np
ctx = cl.create_some_context(interactive=False)
q = cl.CommandQueue(ctx)
prg = cl.Program(ctx, "__kernel void inc(__global float *x){ x[get_global_id(0)] += 1; }").build()
a = np.zeros(1 << 16, dtype=np.float32)
buf = cl.Buffer(ctx, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR, hostbuf=a)
print("running on", ctx.devices[0].name.strip(), flush=True)
while True:
    prg.inc(q, a.shape, None, buf)
    q.finish()
"""

IGNORES_TERM = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


class Clock:
    def __init__(self) -> None:
        import time

        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def start(code: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the process is up and doing its work
    assert line.strip(), "helper process did not start"
    return proc


def ended_by(proc: subprocess.Popen[str]) -> int:
    """The signal that ended the process."""
    return -proc.wait(timeout=30)


@pytest.fixture
def clocked(state_path: Path, host_devices: list[Device]):  # type: ignore[no-untyped-def]
    clock = Clock()
    with Store(host_devices, state_path, clock=clock) as store:
        yield store, clock


@pytest.fixture
def cleanup():  # type: ignore[no-untyped-def]
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_expired_partition_stops_its_opencl_process(clocked, cleanup) -> None:  # type: ignore[no-untyped-def]
    store, clock = clocked
    partition = store.create("0.5", "1m", owner="ana")
    worker = start(OPENCL_WORKER, os.environ | confinement_env(partition, store.devices))
    cleanup.append(worker)
    store.attach(partition.id, worker.pid)
    dog = Watchdog(store, grace=30)

    assert dog.tick() == []  # before expiry: nothing happens
    assert worker.poll() is None

    clock.now += 61
    events = dog.tick()
    assert (EventKind.REAPED, partition.id) in [(e.kind, e.partition_id) for e in events]
    stopped = [e for e in events if e.kind is EventKind.TERMINATED]
    assert [(e.pid, e.reason) for e in stopped] == [(worker.pid, "partition expired")]
    assert ended_by(worker) == signal.SIGTERM
    assert store.get(partition.id).processes == ()  # record dropped once the process is gone
    assert store.used() == {}


def test_released_partition_stops_its_whole_process_tree(clocked, cleanup) -> None:  # type: ignore[no-untyped-def]
    store, _ = clocked
    parent = start(
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    cleanup.append(parent)
    child_pid = psutil.Process(parent.pid).children()[0].pid
    partition = store.create("0.2", "1h", pids=[parent.pid])
    store.release(partition.id)
    events = Watchdog(store, grace=30).tick()
    assert {e.pid for e in events if e.kind is EventKind.TERMINATED} == {parent.pid, child_pid}
    assert ended_by(parent) == signal.SIGTERM
    assert (
        not psutil.pid_exists(child_pid)
        or psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE
    )


def test_a_process_ignoring_sigterm_gets_sigkill_after_the_grace(clocked, cleanup) -> None:  # type: ignore[no-untyped-def]
    store, clock = clocked
    stubborn = start(IGNORES_TERM)
    cleanup.append(stubborn)
    store.create("0.1", "1m", pids=[stubborn.pid])
    clock.now += 120
    events = Watchdog(store, grace=0.5).tick()
    assert [(e.kind, e.pid) for e in events if e.pid] == [(EventKind.KILLED, stubborn.pid)]
    assert ended_by(stubborn) == signal.SIGKILL


def test_memory_over_the_cap_stops_the_process_but_keeps_the_partition(clocked, cleanup) -> None:  # type: ignore[no-untyped-def]
    store, _ = clocked
    worker = start(OPENCL_WORKER)
    cleanup.append(worker)
    partition = store.create("0.5", "1h", pids=[worker.pid])
    monitor = FixedMonitor(
        [ProcessUsage(worker.pid, None, partition.memory_bytes)]
    )  # at the cap: fine
    dog = Watchdog(store, monitor, grace=30)
    assert dog.tick() == []
    monitor.set([ProcessUsage(worker.pid, None, partition.memory_bytes + 1)])
    [event] = dog.tick()
    assert event.kind is EventKind.TERMINATED and event.pid == worker.pid
    assert "over its cap" in event.reason
    assert ended_by(worker) == signal.SIGTERM
    assert store.get(partition.id).is_active


def test_memory_held_by_a_child_counts_against_the_partition(
    four_devices: list[Device], tmp_path: Path, cleanup
) -> None:  # type: ignore[no-untyped-def]
    parent = start(
        "import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\nprint('up', flush=True)\ntime.sleep(600)\n"
    )
    cleanup.append(parent)
    child = psutil.Process(parent.pid).children()[0]
    with Store(four_devices, tmp_path / "s.sqlite3") as store:
        partition = store.create("0.5", "1h", devices="gpu1", pids=[parent.pid])
        monitor = FixedMonitor([ProcessUsage(child.pid, "GPU-1", 2**30)])
        dog = Watchdog(store, monitor, grace=30)
        assert dog.tick() == []
        monitor.set([ProcessUsage(child.pid, "GPU-3", 2**20)])  # a device outside the partition
        events = dog.tick()
        assert {e.pid for e in events} == {parent.pid, child.pid}
        assert all("uses device GPU-3 outside its partition" in e.reason for e in events)
        assert store.get(partition.id).is_active


def test_a_recycled_pid_is_never_signalled(clocked) -> None:  # type: ignore[no-untyped-def]
    store, clock = clocked
    me = psutil.Process(os.getpid())
    impostor = ProcessRef(pid=me.pid, started=me.create_time() - 3600)  # same PID, older process
    assert live_process(impostor) is None
    partition = store.create("0.1", "1m")
    with store._lock:  # plant a record of an older process that had the same PID
        store._db.execute(
            "INSERT INTO processes VALUES (?,?,?)", (partition.id, impostor.pid, impostor.started)
        )
    clock.now += 61
    events = Watchdog(store, grace=1).tick()
    assert [(e.kind, e.pid) for e in events if e.pid] == [(EventKind.GONE, me.pid)]
