"""Chronos: fractions of GPUs for a limited time, durable and enforced.

Chronos imports nothing else of the project; the gateway and the CLI stand on it. The names
below load lazily (PEP 562): ``import chronos`` costs nothing, and ``chronos.GpuAmount`` does
not pull in SQLite, psutil or OpenCL.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_HOME = {
    "chronos.amount": ("GpuAmount", "format_duration", "parse_duration"),
    "chronos.device": ("Device", "Vendor", "discover"),
    "chronos.enforce": ("confinement_env",),
    "chronos.errors": (
        "ChronosError", "InvalidArgument", "NotFound", "PartitionEnded", "ResourceExhausted",
        "StateUnavailable",
    ),
    "chronos.monitor": ("FixedMonitor", "MemoryMonitor", "ProcessUsage"),
    "chronos.partition": ("Partition", "PartitionState", "ProcessRef"),
    "chronos.store": ("Store", "default_state_path"),
    "chronos.watchdog": ("Watchdog", "WatchdogEvent"),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}

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


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'chronos' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
