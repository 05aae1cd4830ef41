"""The memory-monitor seam shared by the NVML monitor and tests.

A monitor reports how much device memory each host process holds; the watchdog compares that
with each partition's cap. `chronos.nvml.NvmlMonitor` is the real one; `FixedMonitor` reports
what it is told, for tests and for hosts where no per-process accounting exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ProcessUsage:
    """Memory that one host process holds on one device (``device_uuid`` None: unknown)."""

    pid: int
    device_uuid: str | None
    bytes: int


class MemoryMonitor(Protocol):
    """Anything that can say which processes hold how much device memory right now."""

    def usage(self) -> list[ProcessUsage]:
        """One entry per (process, device) with memory in use; called once per watchdog tick."""
        ...


class FixedMonitor:
    """A monitor whose readings are set by its owner (tests; hosts without NVML)."""

    def __init__(self, readings: Iterable[ProcessUsage] = ()) -> None:
        self.readings = list(readings)

    def set(self, readings: Iterable[ProcessUsage]) -> None:
        self.readings = list(readings)

    def usage(self) -> list[ProcessUsage]:
        return list(self.readings)
