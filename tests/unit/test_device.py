import json
from pathlib import Path

import pytest

from chronos import Device, InvalidArgument, Vendor, discover
from chronos.device import load_configured, merge, resolve
from chronos.nvml import NvmlDevice

pytestmark = pytest.mark.unit


def test_discovery_finds_the_pocl_cpu_device_through_opencl(host_devices: list[Device]) -> None:
    pocl = [d for d in host_devices if d.opencl is not None and "pthread" in d.name.lower()]
    assert pocl, f"PoCL device missing from {host_devices}"
    device = pocl[0]
    assert device.kind == "cpu"
    assert device.vendor is Vendor.OTHER  # PoCL's CPU device: no vendor runtime confines it
    assert device.memory_bytes > 2**20
    assert device.id == f"gpu{device.index}"
    assert "opencl" in device.sources


def test_configured_list_replaces_discovery(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(
        json.dumps(
            [{"name": "A100", "vendor": "nvidia", "memory_bytes": 40 * 2**30, "uuid": "GPU-x"}]
        )
    )
    [device] = discover({"CHRONOS_DEVICES": str(path)})
    assert (device.name, device.vendor, device.uuid, device.sources) == (
        "A100",
        Vendor.NVIDIA,
        "GPU-x",
        ("config",),
    )
    inline = discover({"CHRONOS_DEVICES": '[{"name": "X", "memory_bytes": 1}]'})
    assert inline[0].name == "X"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/nonexistent/devices.json", "Cannot read device list /nonexistent/devices.json"),
        ("[{", "is not valid JSON"),
        ('{"name": 1}', "must be a JSON list of objects"),
        ("[1, 2]", "must be a JSON list of objects"),
        ('[{"name": "x"}]', "Invalid device entry #0"),
        ('[{"name": "x", "memory_bytes": 1, "vendor": "acme"}]', "Invalid device entry #0"),
    ],
)
def test_bad_device_lists_are_refused_clearly(spec: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        load_configured(spec)


def test_nvml_devices_come_first_and_absorb_their_opencl_twin() -> None:
    nvidia = [NvmlDevice(0, "H100", "GPU-aaa", "00000000:3B:00.0", 80 * 2**30)]
    opencl = [
        Device(
            0,
            "NVIDIA H100",
            Vendor.NVIDIA,
            "gpu",
            80 * 2**30,
            pci_bus_id="00000000:3B:00.0",
            opencl=(1, 0),
            sources=("opencl",),
        ),
        Device(1, "pthread-cpu", Vendor.OTHER, "cpu", 2**30, opencl=(0, 0), sources=("opencl",)),
    ]
    merged = merge(nvidia, opencl)
    assert [(d.index, d.name, d.uuid, d.opencl) for d in merged] == [
        (0, "H100", "GPU-aaa", (1, 0)),
        (1, "pthread-cpu", None, (0, 0)),
    ]
    assert merged[0].sources == ("nvml", "opencl")


def test_resolve_by_index_id_or_uuid(four_devices: list[Device]) -> None:
    assert resolve(four_devices, "2").index == 2
    assert resolve(four_devices, "gpu3").index == 3
    assert resolve(four_devices, "GPU-1").index == 1
    with pytest.raises(
        InvalidArgument, match=r"Unknown device: gpu9\. Known devices: gpu0, gpu1, gpu2, gpu3"
    ):
        resolve(four_devices, "gpu9")
