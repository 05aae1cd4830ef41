"""Devices that partitions are cut from: discovered, or pinned by configuration.

Discovery goes through OpenCL (pyopencl) so that any vendor's device is found: NVIDIA, AMD,
Intel, Apple, and the PoCL CPU device that tests and CI run on. NVIDIA devices are enriched, or
found outright when no NVIDIA OpenCL driver is installed, through NVML. A JSON device list named
by ``CHRONOS_DEVICES`` replaces discovery entirely.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from chronos import nvml
from chronos.errors import InvalidArgument

DEVICES_ENV = "CHRONOS_DEVICES"


class Vendor(StrEnum):
    """The vendor families that decide which visibility variable confines a process."""

    NVIDIA = "nvidia"
    AMD = "amd"
    INTEL = "intel"
    APPLE = "apple"
    OTHER = "other"

    @classmethod
    def from_name(cls, text: str) -> Vendor:
        """Map an OpenCL vendor string ("NVIDIA Corporation", "Advanced Micro Devices")."""
        lowered = text.lower()
        for vendor, marks in _VENDOR_MARKS.items():
            if any(mark in lowered for mark in marks):
                return vendor
        return cls.OTHER


_VENDOR_MARKS = {
    Vendor.NVIDIA: ("nvidia",),
    Vendor.AMD: ("advanced micro devices", "amd"),
    Vendor.INTEL: ("intel",),
    Vendor.APPLE: ("apple",),
}


@dataclass(frozen=True)
class Device:
    """One device partitions can be taken from.

    ``index`` is the device's place in the discovered (or configured) list, and ``id`` its name
    in messages and on the CLI (``gpu0``). ``opencl`` is ``(platform_index, device_index)`` when
    OpenCL sees the device; ``uuid`` and ``pci_bus_id`` come from NVML for NVIDIA devices.
    """

    index: int
    name: str
    vendor: Vendor
    kind: str
    memory_bytes: int
    uuid: str | None = None
    pci_bus_id: str | None = None
    opencl: tuple[int, int] | None = None
    sources: tuple[str, ...] = field(default=())
    host: str | None = None  # the host it is on, when devices span hosts (a Swarm's nodes)

    @property
    def id(self) -> str:
        return f"gpu{self.index}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["id"] = self.id
        data["opencl"] = list(self.opencl) if self.opencl else None
        data["sources"] = list(self.sources)
        return data

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Device:
        """The device `to_json` wrote (the store's device table keeps devices this way)."""
        opencl = data.get("opencl")
        return cls(
            index=int(data["index"]),
            name=str(data["name"]),
            vendor=Vendor(str(data["vendor"])),
            kind=str(data["kind"]),
            memory_bytes=int(data["memory_bytes"]),
            uuid=data.get("uuid"),
            pci_bus_id=data.get("pci_bus_id"),
            opencl=(int(opencl[0]), int(opencl[1])) if opencl else None,
            sources=tuple(str(s) for s in data.get("sources", ())),
            host=data.get("host"),
        )

    @classmethod
    def from_json(cls, index: int, data: dict[str, Any]) -> Device:
        """Build a device from a configured entry; ``name`` and ``memory_bytes`` are required."""
        try:
            opencl = data.get("opencl")
            return cls(
                index=index,
                name=str(data["name"]),
                vendor=Vendor(str(data.get("vendor", "other")).lower()),
                kind=str(data.get("kind", "gpu")),
                memory_bytes=int(data["memory_bytes"]),
                uuid=data.get("uuid"),
                pci_bus_id=data.get("pci_bus_id"),
                opencl=(int(opencl[0]), int(opencl[1])) if opencl else None,
                sources=("config",),
                host=data.get("host") or data.get("node"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(
                f"Invalid device entry #{index} in {DEVICES_ENV}: {exc!r}; "
                "each entry needs at least name and memory_bytes"
            ) from exc


def discover(env: dict[str, str] | None = None) -> list[Device]:
    """The devices of this host: the configured list if ``CHRONOS_DEVICES`` is set, else
    NVML's NVIDIA devices followed by every OpenCL device that is not one of them."""
    environ = os.environ if env is None else env
    configured = environ.get(DEVICES_ENV)
    if configured:
        return load_configured(configured)
    return merge(nvml.devices(), _opencl_devices())


def load_configured(spec: str) -> list[Device]:
    """Devices from a JSON list, given inline or as the path of a file holding it."""
    text = spec
    if not spec.lstrip().startswith(("[", "{")):
        path = Path(spec).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise InvalidArgument(
                f"Cannot read device list {path} ({DEVICES_ENV}): {exc.strerror}"
            ) from exc
    entries = json_objects(text, f"Device list in {DEVICES_ENV}")
    return [Device.from_json(i, entry) for i, entry in enumerate(entries)]


def json_objects(text: str, what: str) -> list[dict[str, Any]]:
    """``text`` read as a JSON list of objects (a device list); `InvalidArgument` naming
    ``what`` otherwise."""
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InvalidArgument(f"{what} must be a JSON list of objects")
    return entries


def merge(nvidia: Sequence[nvml.NvmlDevice], opencl: Iterable[Device]) -> list[Device]:
    """NVML devices first (CUDA order), then OpenCL devices; an OpenCL NVIDIA device that
    matches an NVML one (by PCI bus id, else by order) only adds its OpenCL coordinates."""
    found = [
        Device(
            index=i,
            name=d.name,
            vendor=Vendor.NVIDIA,
            kind="gpu",
            memory_bytes=d.memory_bytes,
            uuid=d.uuid,
            pci_bus_id=d.pci_bus_id,
            sources=("nvml",),
        )
        for i, d in enumerate(nvidia)
    ]
    unmatched_nvidia = list(range(len(found)))
    for device in opencl:
        match = _match_nvml(device, found, unmatched_nvidia)
        if match is None:
            found.append(replace(device, index=len(found)))
        else:
            unmatched_nvidia.remove(match)
            found[match] = replace(
                found[match], opencl=device.opencl, sources=(*found[match].sources, "opencl")
            )
    return found


def _match_nvml(device: Device, found: list[Device], candidates: list[int]) -> int | None:
    if device.vendor is not Vendor.NVIDIA or not candidates:
        return None
    for i in candidates:
        if device.pci_bus_id and found[i].pci_bus_id == device.pci_bus_id:
            return i
    return candidates[0] if device.pci_bus_id is None else None


def _opencl_devices() -> list[Device]:
    try:
        import pyopencl as cl
    except ImportError:
        return []
    try:
        platforms = cl.get_platforms()
    except cl.Error:  # no ICD loader or no platform installed
        return []
    devices: list[Device] = []
    for p_index, platform in enumerate(platforms):
        try:
            platform_devices = platform.get_devices()
        except cl.Error:
            continue
        for d_index, dev in enumerate(platform_devices):
            devices.append(
                Device(
                    index=len(devices),
                    name=dev.name.strip(),
                    vendor=_opencl_vendor(platform.vendor, int(dev.type), cl),
                    kind=_opencl_kind(cl, int(dev.type)),
                    memory_bytes=int(dev.global_mem_size),
                    pci_bus_id=_opencl_pci_bus_id(dev),
                    opencl=(p_index, d_index),
                    sources=("opencl",),
                )
            )
    return devices


def _opencl_vendor(platform_vendor: str, bits: int, cl: Any) -> Vendor:
    # The platform's vendor names the runtime that drives the device (PoCL's CPU device reports
    # "AuthenticAMD" as its own vendor, yet no ROCm variable governs it).
    if not bits & int(cl.device_type.GPU):
        return Vendor.OTHER
    return Vendor.from_name(platform_vendor)


def _opencl_kind(cl: Any, bits: int) -> str:
    for kind in ("GPU", "ACCELERATOR", "CPU"):
        if bits & int(getattr(cl.device_type, kind)):
            return kind.lower()
    return "other"


def _opencl_pci_bus_id(dev: Any) -> str | None:
    # NVIDIA's OpenCL driver exposes bus/slot through cl_nv_device_attribute_query; NVML spells
    # the same place "00000000:BB:SS.0", so build that form to match on.
    if "cl_nv_device_attribute_query" not in dev.extensions:
        return None
    try:
        bus, slot = int(dev.pci_bus_id_nv), int(dev.pci_slot_id_nv)
    except Exception:
        return None
    return f"00000000:{bus:02X}:{slot >> 3:02X}.0"


def resolve(devices: Sequence[Device], ref: str) -> Device:
    """The device named by ``ref``: an index (``0``), an id (``gpu0``) or an NVIDIA UUID."""
    text = ref.strip()
    for device in devices:
        if text in (str(device.index), device.id) or (device.uuid and text == device.uuid):
            return device
    known = ", ".join(d.id for d in devices) or "none"
    raise InvalidArgument(f"Unknown device: {text}. Known devices: {known}")


def identities(devices: Sequence[Device]) -> list[tuple[str, ...]]:
    """What names each device across discoveries, in order: its NVIDIA UUID (unique anywhere:
    the same GPU on a host that rejoined a Swarm under a new node id), else its host and PCI
    bus id, else its host, name and how many same-named devices come before it there (two
    identical devices without either are told apart by order only)."""
    seen: dict[tuple[str, str], int] = {}
    keys: list[tuple[str, ...]] = []
    for d in devices:
        host = d.host or ""
        if d.uuid:
            keys.append(("uuid", d.uuid))
        elif d.pci_bus_id:
            keys.append((host, "pci", d.pci_bus_id))
        else:
            nth = seen.get((host, d.name), 0)
            seen[(host, d.name)] = nth + 1
            keys.append((host, "name", d.name, str(nth)))
    return keys


@dataclass(frozen=True)
class Reconciled:
    """Known devices against a new discovery: ``devices`` is every device known, by index
    (the known ones first, as found now where found; ``added``: the indices of those found
    for the first time, appended), ``offline``: the indices of known devices not found."""

    devices: tuple[Device, ...]
    added: tuple[int, ...]
    offline: frozenset[int]


def reconcile(known: Sequence[Device], found: Sequence[Device]) -> Reconciled:
    """Match ``found`` to ``known`` by `identities`. A known device keeps its index (partitions
    refer to it), whether found or not, and takes what is found now (its host may be a new
    node); a new one gets the next free index."""
    known_keys = identities(known)
    found_keys = identities(found)
    present = set(found_keys)
    index_of = {key: d.index for d, key in zip(known, known_keys, strict=True)}
    devices = list(known)
    added: list[int] = []
    for key, device in zip(found_keys, found, strict=True):
        if key in index_of:
            devices[index_of[key]] = replace(device, index=index_of[key])
            continue
        index_of[key] = len(devices)
        added.append(len(devices))
        devices.append(replace(device, index=len(devices)))
    missing = (d for d, key in zip(known, known_keys, strict=True) if key not in present)
    offline = frozenset(d.index for d in missing)
    return Reconciled(tuple(devices), tuple(added), offline)
