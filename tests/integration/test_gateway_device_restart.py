"""A gateway restarted with a device gone keeps every device's id: the state file's device table
is matched against the new discovery, so the kernel it re-adopts is still on the device its
partition names, and the device that went is listed offline (not renumbered away)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chronos import Store
from chronos.device import load_configured
from tests.support.gateway import Gateway

pytestmark = pytest.mark.integration


def device(n: int) -> dict[str, object]:
    return {"name": f"dev{n}", "vendor": "other", "memory_bytes": 2**34, "uuid": f"GPU-{n}"}


def test_a_restart_with_a_device_removed_keeps_ids_and_lists_it_offline(tmp_path: Path) -> None:
    devices_file = tmp_path / "devices.json"
    devices_file.write_text(json.dumps([device(0), device(1), device(2)]))
    gateway = Gateway(
        tmp_path / "state" / "chronos.sqlite3", tmp_path / "gateway.log",
        env={"CHRONOS_DEVICES": str(devices_file)},
    )  # fmt: skip
    try:
        kernel = gateway.start_kernel(KERNEL_GPU="0.5", KERNEL_GPU_DEVICES="gpu2")
        assert kernel["cumulus"]["device"] == "gpu2"

        gateway.kill()
        # gpu1 is gone: a gateway numbering what it finds would now call GPU-2 "gpu1"
        devices_file.write_text(json.dumps([device(0), device(2)]))
        gateway.start()

        [adopted] = gateway.get("/api/kernels").json()
        assert adopted["id"] == kernel["id"]
        assert adopted["cumulus"]["partition_id"] == kernel["cumulus"]["partition_id"]
        assert adopted["cumulus"]["device"] == "gpu2"
        listed = {d["id"]: d for d in gateway.get("/api/cumulus/devices").json()}
        assert {i: (d["uuid"], d["online"]) for i, d in listed.items()} == {
            "gpu0": ("GPU-0", True), "gpu1": ("GPU-1", False), "gpu2": ("GPU-2", True),
        }  # fmt: skip
        assert listed["gpu2"]["free"] == 0.5
        health = gateway.get("/api/cumulus/health").json()
        assert (health["devices"], health["devices_online"]) == (3, 2)
        refused = gateway.post(
            "/api/kernels",
            {"name": "cumulus-gpu", "env": {"KERNEL_GPU": "0.1", "KERNEL_GPU_DEVICES": "gpu1",
                                            "KERNEL_WAIT": "0"}},
        )  # fmt: skip
        assert refused.status_code == 429, refused.text
        with Store(load_configured(str(devices_file)), gateway.state) as store:
            partition = store.get(kernel["cumulus"]["partition_id"])
            assert partition.is_active and partition.devices == (2,)
        assert gateway.delete(f"/api/kernels/{kernel['id']}").status_code == 204
    finally:
        gateway.stop()
