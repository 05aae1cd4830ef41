"""NVIDIA facts through NVML (nvidia-ml-py), when the library and a driver are present.

Everything here degrades to "no NVIDIA devices" when NVML cannot be loaded, so the rest of
Chronos never has to ask whether a driver exists.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from chronos.monitor import ProcessUsage

_lock = threading.Lock()
_state: dict[str, Any] = {"initialised": False, "module": None}


@dataclass(frozen=True)
class NvmlDevice:
    index: int
    name: str
    uuid: str
    pci_bus_id: str
    memory_bytes: int


def _nvml() -> Any | None:
    """The initialised ``pynvml`` module, or None where there is no NVML (no driver, no GPU)."""
    with _lock:
        if _state["initialised"]:
            return _state["module"]
        _state["initialised"] = True
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # ImportError, or NVMLError_LibraryNotFound / DriverNotLoaded
            return None
        _state["module"] = pynvml
        return pynvml


def available() -> bool:
    """True when NVML is loaded and answers."""
    return _nvml() is not None


def devices() -> list[NvmlDevice]:
    """NVIDIA devices in NVML (= CUDA PCI) order; empty without NVML."""
    nv = _nvml()
    if nv is None:
        return []
    found = []
    for index in range(nv.nvmlDeviceGetCount()):
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        found.append(
            NvmlDevice(
                index=index,
                name=_text(nv.nvmlDeviceGetName(handle)),
                uuid=_text(nv.nvmlDeviceGetUUID(handle)),
                pci_bus_id=_text(nv.nvmlDeviceGetPciInfo(handle).busId),
                memory_bytes=int(nv.nvmlDeviceGetMemoryInfo(handle).total),
            )
        )
    return found


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class NvmlMonitor:
    """Per-process GPU memory from NVML. PIDs are host PIDs (as the watchdog needs them)."""

    def usage(self) -> list[ProcessUsage]:
        nv = _nvml()
        if nv is None:
            return []
        found: list[ProcessUsage] = []
        for index in range(nv.nvmlDeviceGetCount()):
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nv.nvmlDeviceGetUUID(handle))
            for query in (
                nv.nvmlDeviceGetComputeRunningProcesses,
                nv.nvmlDeviceGetGraphicsRunningProcesses,
            ):
                try:
                    processes = query(handle)
                except nv.NVMLError:
                    continue
                found.extend(
                    ProcessUsage(pid=int(p.pid), device_uuid=uuid, bytes=int(p.usedGpuMemory or 0))
                    for p in processes
                )
        return found
