"""Operations: the OpenAPI document matches the app, /metrics, culling of idle kernels."""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from gateway.handlers import SERVICES
from gateway.handlers.server import NoSuchEndpoint
from tests.support.gateway import Gateway
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

SPEC = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "gateway" / "openapi.yaml").read_text()
)


def schema(name: str) -> dict[str, Any]:
    """A component schema, resolvable on its own (refs point into the whole document)."""
    return {"$ref": f"#/components/schemas/{name}", "components": SPEC["components"]}


def check(instance: Any, ref: str) -> None:
    jsonschema.Draft202012Validator(schema(ref)).validate(instance)


def test_every_gateway_route_is_documented() -> None:
    documented = set(SPEC["paths"])
    served = [h for name in SERVICES for h in importlib.import_module(name).default_handlers]
    for pattern, handler in served:
        if handler is NoSuchEndpoint:  # the JSON 404 of what no route matches
            continue
        path = pattern.replace("(?P<kernel_name>[\\w\\.\\-%]+)", "{kernel_name}")
        path = path.replace("(?P<kernel_id>\\w+-\\w+-\\w+-\\w+-\\w+)", "{kernel_id}")
        path = path.replace("(?P<kernel_id>[\\w-]+)", "{kernel_id}")
        path = path.replace("(?P<transfer_id>[^/]+)", "{transfer_id}")
        path = path.replace("(?P<job_id>j-[0-9a-f]{12})", "{job_id}")
        path = path.replace("(?P<partition_id>[^/]+)", "{partition_id}")
        for name in ("name", "version", "file"):  # a checkpoint's
            path = path.replace(f"(?P<{name}>[^/]+)", f"{{{name}}}")
        if "(?P<action>" in path:
            assert {
                path.split("/(?P<action>")[0] + s for s in ("/interrupt", "/restart")
            } <= documented
        else:
            assert path in documented, f"{pattern} is served but not in gateway/openapi.yaml"


def test_live_responses_match_the_document(gateway: Gateway) -> None:
    model = gateway.start_kernel(KERNEL_GPU="0.4")
    check(model, "Kernel")
    for item in gateway.get("/api/kernels").json():
        check(item, "Kernel")
    check(gateway.get(f"/api/kernels/{model['id']}").json(), "Kernel")
    check(gateway.get("/api/kernelspecs").json(), "KernelSpecs")
    check(gateway.get("/api/cumulus/health").json(), "Health")
    for device in gateway.get("/api/cumulus/devices").json():
        check(device, "Device")
    for partition in gateway.get("/api/cumulus/partitions").json():
        check(partition, "Partition")
    check(gateway.post("/api/kernels", {"env": {"KERNEL_GPU": "7.5"}}).json(), "Error")
    check(
        gateway.post("/api/kernels", {"env": {"KERNEL_GPU": "0.7", "KERNEL_WAIT": "0"}}).json(),
        "Error",
    )


def test_metrics_report_kernels_partitions_queue_and_allocation(gateway: Gateway) -> None:
    gateway.start_kernel(KERNEL_GPU="0.5")
    assert httpx.get(gateway.url + "/metrics", timeout=30).status_code in (401, 403)
    text = gateway.get("/metrics").text
    assert "cumulus_kernels 1.0" in text
    assert "cumulus_partitions_active 1.0" in text
    assert "cumulus_queue_length 0.0" in text
    assert "cumulus_partition_allocation_seconds_count 1.0" in text
    # device shares are read on the expiry supervisor's tick: the next one shows this kernel's
    wait_until(
        lambda: 'cumulus_device_free{device="gpu0"} 0.5' in gateway.get("/metrics").text,
        what="the device's free share after the next tick",
    )


def test_idle_kernels_are_culled_and_their_partitions_released(tmp_path: Path) -> None:
    gw = Gateway(
        tmp_path / "state" / "chronos.sqlite3", tmp_path / "gateway.log",
        "--CumulusKernelManager.cull_idle_timeout=1", "--CumulusKernelManager.cull_interval=1",
    )  # fmt: skip
    try:
        model = gw.start_kernel()
        deadline = time.monotonic() + 60
        while gw.get("/api/kernels").json() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gw.get("/api/kernels").json() == []
        assert gw.get("/api/cumulus/partitions").json() == []
        assert "Culling kernel" in gw.log() or model["id"] in gw.log()
    finally:
        gw.stop()


def test_json_logs_are_one_object_per_line_with_kernel_events(tmp_path: Path) -> None:
    import json

    gw = Gateway(
        tmp_path / "state" / "chronos.sqlite3",
        tmp_path / "gateway.log",
        "--CumulusGateway.json_logs=True",
    )
    try:
        model = gw.start_kernel()
        gw.delete(f"/api/kernels/{model['id']}")
    finally:
        gw.stop()
    entries = [json.loads(line) for line in gw.log().splitlines() if line.startswith("{")]
    assert len(entries) >= 3
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    started = [e for e in entries if e.get("event") == "kernel_started"]
    assert (
        started
        and started[0]["kernel_id"] == model["id"]
        and started[0]["partition_id"] == model["cumulus"]["partition_id"]
    )


@pytest.mark.parametrize(
    ("args", "state_bytes", "code", "message"),
    [
        (
            ["--runtime", "nowhere"],
            None,
            2,
            "Unknown runtime: nowhere. Choose one of: docker, local, swarm",
        ),
        ([], b"not a database" * 100, 5, "is corrupt or not a Chronos store"),
    ],
)
def test_bad_settings_stop_start_up_with_one_clear_line(
    tmp_path: Path, args: list[str], state_bytes: bytes | None, code: int, message: str
) -> None:
    import os
    import subprocess
    import sys

    state = tmp_path / "state.sqlite3"
    if state_bytes is not None:
        state.write_bytes(state_bytes)
    done = subprocess.run(
        [str(Path(sys.executable).with_name("cumulus-gateway")), "--allow-root", "--port=0", *args],
        capture_output=True, text=True, timeout=120, env=os.environ | {"CHRONOS_STATE": str(state)},
    )  # fmt: skip
    assert done.returncode == code
    critical = [line for line in done.stderr.splitlines() if "[C " in line]
    assert len(critical) == 1 and message in critical[0]
    assert "Traceback" not in done.stderr
