"""``scripts/setup-worker.sh`` against a real engine: it detects this host's devices through the
job image and labels the engine's configuration, keeping what was there."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from chronos import discover
from tests.support.engine import Engine

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]  # the first builds the image


def test_the_worker_is_labelled_with_the_devices_the_job_image_finds(
    tmp_path: Path, engine: Engine, job_image: str
) -> None:
    config = tmp_path / "daemon.json"
    config.write_text(
        json.dumps({"log-driver": "json-file", "labels": ["zone=a", "cumulus.devices=[]"]})
    )
    result = subprocess.run(
        ["scripts/setup-worker.sh", "--config-only", "--image-tag", job_image],
        env=os.environ | {"DOCKER_HOST": engine.url, "CUMULUS_DOCKER_CONFIG": str(config)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    written = json.loads(config.read_text())
    assert written["log-driver"] == "json-file"
    (label,) = [lab for lab in written["labels"] if lab.startswith("cumulus.devices=")]
    assert "zone=a" in written["labels"]
    devices = json.loads(label.split("=", 1)[1])
    here = discover({})
    # the same devices (PoCL sizes the CPU device's memory by what is free at the moment)
    assert [(d["name"], d["vendor"], d["kind"]) for d in devices] == [
        (d.name, d.vendor.value, d.kind) for d in here
    ]
    assert all(d["memory_bytes"] > 0 for d in devices)
