"""Prometheus metrics, served with jupyter_server's own at ``/metrics`` (token required, as
for every endpoint): kernels, partitions, queue length, allocation latency, free capacity."""

from __future__ import annotations

from collections.abc import Callable, Iterable

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
    for device_id, share in free:
        DEVICE_FREE.labels(device=device_id).set(share)
