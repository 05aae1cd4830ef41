"""Chronos: fractions of GPUs for a limited time, durable and enforced.

Chronos imports nothing else of the project; the gateway and the CLI stand on it.
"""

from chronos.amount import GpuAmount, format_duration, parse_duration
from chronos.device import Device, Vendor, discover
from chronos.enforce import confinement_env
from chronos.errors import (
    ChronosError,
    InvalidArgument,
    NotFound,
    PartitionEnded,
    ResourceExhausted,
    StateUnavailable,
)
from chronos.monitor import FixedMonitor, MemoryMonitor, ProcessUsage
from chronos.partition import Partition, PartitionState, ProcessRef
from chronos.store import Store, default_state_path
from chronos.watchdog import Watchdog, WatchdogEvent

__all__ = [
    "ChronosError",
    "Device",
    "FixedMonitor",
    "GpuAmount",
    "InvalidArgument",
    "MemoryMonitor",
    "NotFound",
    "Partition",
    "PartitionEnded",
    "PartitionState",
    "ProcessRef",
    "ProcessUsage",
    "ResourceExhausted",
    "StateUnavailable",
    "Store",
    "Vendor",
    "Watchdog",
    "WatchdogEvent",
    "confinement_env",
    "default_state_path",
    "discover",
    "format_duration",
    "parse_duration",
]
