"""Prometheus metrics, served with jupyter_server's own at ``/metrics`` (token required, as
for every endpoint): kernels, partitions, queue length, allocation latency, free capacity."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from gateway.manager import CumulusKernelManager

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


def bind(manager: CumulusKernelManager) -> None:
    """Read the gauges from the live manager whenever ``/metrics`` is scraped."""
    KERNELS.set_function(lambda: len(manager.list_kernel_ids()))
    PARTITIONS.set_function(lambda: len(manager.broker.store.partitions()))
    QUEUE.set_function(lambda: manager.broker.queue_length)


def update_devices(manager: CumulusKernelManager) -> None:
    """Called on each supervisor tick."""
    used = manager.broker.store.used()
    for device in manager.broker.store.devices:
        DEVICE_FREE.labels(device=device.id).set((10 - used.get(device.index, 0)) / 10)
