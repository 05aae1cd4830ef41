"""Prometheus metrics, served with jupyter_server's own at ``/metrics`` (token required, as
for every endpoint): kernels, partitions, queue length, allocation latency, free capacity,
device utilization, time spent in the queue, and the GPUs each user holds; and the seed's
three, under its names: ``cumulus_worker_assignments_total{status}`` (each kernel start, a
batch job's included, by how it ended: a kernel placed on a worker in a partition, or not),
``cumulus_active_workers`` (kernels holding a partition now: the seed's workers) and
``cumulus_job_duration_seconds{status}`` (batch jobs, by their final state)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import Counter, Gauge, Histogram

from cumulus_jupyter.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted

KERNELS = Gauge("cumulus_kernels", "Kernels running in partitions")
PARTITIONS = Gauge("cumulus_partitions_active", "Active Chronos partitions on this gateway's node")
QUEUE = Gauge("cumulus_queue_length", "Kernel requests waiting for a partition")
DEVICE_FREE = Gauge("cumulus_device_free", "Free share of each device (0-1)", ["device"])
DEVICE_ONLINE = Gauge(
    "cumulus_device_online",
    "Whether each device was found by the last device discovery (1) or is offline (0)",
    ["device"],
)
ALLOCATION = Histogram(
    "cumulus_partition_allocation_seconds",
    "Time from a kernel's request to its partition (queueing included)",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
)

UTILIZATION = Gauge(
    "cumulus_device_utilization",
    "Share of the online devices' capacity held by partitions (0-1; 0 with none online)",
)
QUEUE_WAIT = Histogram(
    "cumulus_queue_wait_seconds",
    "Time a served partition request spent in the queue (0: served at once)",
    buckets=(0, 1, 10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400),
)
GPU_HELD = Gauge("cumulus_gpu_held", "GPUs held by each user's active partitions", ["user"])

TRANSFERRED = Counter(
    "cumulus_transfer_bytes",
    "Bytes moved on the data path between clients and kernels",
    ["direction"],
)

#: the outcomes `assignment` counts, each exported from the start (at 0)
ASSIGNMENT_STATUSES = ("assigned", "refused", "invalid", "timed_out", "cancelled", "failed")
WORKER_ASSIGNMENTS = Counter(
    "cumulus_worker_assignments",  # exported as cumulus_worker_assignments_total
    "Kernel starts (batch jobs' included) by outcome: assigned (placed on a worker in a "
    "partition), refused (no capacity, a quota), invalid (a bad request), timed_out (waited "
    "past its launch timeout), cancelled (its requester left), failed (the launch failed)",
    ["status"],
)
for _status in ASSIGNMENT_STATUSES:
    WORKER_ASSIGNMENTS.labels(status=_status)
ACTIVE_WORKERS = Gauge(
    "cumulus_active_workers", "Kernels holding a partition now (batch jobs' included)"
)
JOB_DURATION = Histogram(
    "cumulus_job_duration_seconds",
    "Batch jobs' time from their start (or, for one that never started, their submission) "
    "to their end, by final state: completed, failed, cancelled",
    ["status"],
    buckets=(1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400),
)


def assignment(error: BaseException | None) -> None:
    """Count a kernel start that ended (``error``: how it failed; None: it started)."""
    if error is None:
        status = "assigned"
    elif isinstance(error, ResourceExhausted):
        status = "refused"
    elif isinstance(error, InvalidArgument):
        status = "invalid"
    elif isinstance(error, DeadlineExceeded | TimeoutError):
        status = "timed_out"
    elif isinstance(error, asyncio.CancelledError):
        status = "cancelled"
    else:
        status = "failed"
    WORKER_ASSIGNMENTS.labels(status=status).inc()


def bind(
    kernels: Callable[[], int],
    partitions: Callable[[], int],
    queue: Callable[[], int],
    workers: Callable[[], int] | None = None,
) -> None:
    """Read the gauges from the live gateway whenever ``/metrics`` is scraped."""
    KERNELS.set_function(kernels)
    PARTITIONS.set_function(partitions)
    QUEUE.set_function(queue)
    if workers is not None:
        ACTIVE_WORKERS.set_function(workers)


_offline: set[str] = set()  # device ids the last discovery did not find


def update_devices(free: Iterable[tuple[str, float]]) -> None:
    """Each device's free share, by device id; called on each supervisor tick. Utilization
    counts online devices only: an offline device offers no capacity (it is no more free
    than it is used), as `/api/cumulus/health`'s ``devices_online`` says."""
    shares = list(free)
    for device_id, share in shares:
        DEVICE_FREE.labels(device=device_id).set(share)
    online = [share for device_id, share in shares if device_id not in _offline]
    UTILIZATION.set(1 - sum(online) / len(online) if online else 0.0)


def update_device_states(states: Iterable[tuple[str, bool]]) -> None:
    """Each device's online state, by device id; called after each device discovery."""
    for device_id, online in states:
        DEVICE_ONLINE.labels(device=device_id).set(1 if online else 0)
        (_offline.discard if online else _offline.add)(device_id)


_held_by: set[str] = set()


def update_holders(held: Mapping[str, float]) -> None:
    """The GPUs each user holds now (the broker calls this at each pump); users who hold
    nothing any more are dropped."""
    for user in _held_by - set(held):
        GPU_HELD.remove(user)
    for user, gpus in held.items():
        GPU_HELD.labels(user=user).set(gpus)
    _held_by.clear()
    _held_by.update(held)
