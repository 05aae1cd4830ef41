"""Prometheus metrics, served with jupyter_server's own at ``/metrics`` (token required, as
for every endpoint): kernels, partitions, queue length, allocation latency, free capacity,
device utilization, time spent in the queue, and the GPUs each user holds."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import Counter, Gauge, Histogram

KERNELS = Gauge("cumulus_kernels", "Kernels running in partitions")
PARTITIONS = Gauge("cumulus_partitions_active", "Active Chronos partitions on this gateway's node")
QUEUE = Gauge("cumulus_queue_length", "Kernel requests waiting for a partition")
DEVICE_FREE = Gauge("cumulus_device_free", "Free share of each device (0-1)", ["device"])
ALLOCATION = Histogram(
    "cumulus_partition_allocation_seconds",
    "Time from a kernel's request to its partition (queueing included)",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
)

UTILIZATION = Gauge(
    "cumulus_device_utilization", "Share of all devices' capacity held by partitions (0-1)"
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


def bind(
    kernels: Callable[[], int], partitions: Callable[[], int], queue: Callable[[], int]
) -> None:
    """Read the gauges from the live gateway whenever ``/metrics`` is scraped."""
    KERNELS.set_function(kernels)
    PARTITIONS.set_function(partitions)
    QUEUE.set_function(queue)


def update_devices(free: Iterable[tuple[str, float]]) -> None:
    """Each device's free share, by device id; called on each supervisor tick."""
    shares = list(free)
    for device_id, share in shares:
        DEVICE_FREE.labels(device=device_id).set(share)
    if shares:
        UTILIZATION.set(1 - sum(share for _, share in shares) / len(shares))


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
