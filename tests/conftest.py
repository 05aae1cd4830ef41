"""Shared fixtures: a state file per test, the real devices of this host, helpers for processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chronos import Device, Store, discover, nvml
from tests.support.gateway import Gateway

PYTHON = sys.executable
_skipped_gpu: list[str] = []


@pytest.fixture
def state_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state" / "chronos.sqlite3"
    monkeypatch.setenv("CHRONOS_STATE", str(path))
    monkeypatch.delenv("CHRONOS_DEVICES", raising=False)
    return path


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    """A gateway on loopback on its defaults, its state in the test's directory (a tier may
    have a gateway fixture of its own)."""
    gw = Gateway(tmp_path / "state" / "chronos.sqlite3", tmp_path / "gateway.log")
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="session")
def host_devices() -> list[Device]:
    """The devices discovery finds here: on CI, the PoCL CPU device, which must be there."""
    devices = discover({})
    assert devices, "no OpenCL or NVML device found: is pocl-binary-distribution installed?"
    return devices


@pytest.fixture
def store(state_path: Path, host_devices: list[Device]) -> Iterator[Store]:
    with Store(host_devices, state_path) as s:
        yield s


@pytest.fixture
def four_devices(tmp_path: Path) -> list[Device]:
    """A pinned list of four 80 GiB NVIDIA devices, as an operator would configure it."""
    spec = [
        {"name": f"H100 #{i}", "vendor": "nvidia", "memory_bytes": 80 * 2**30, "uuid": f"GPU-{i}"}
        for i in range(4)
    ]
    path = tmp_path / "devices.json"
    path.write_text(json.dumps(spec))
    from chronos.device import load_configured

    return load_configured(str(path))


class Processes:
    """Starts helper processes and stops every one of them, by PID, when the test ends."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def python(self, code: str, **kwargs: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([PYTHON, "-c", code], **kwargs)  # type: ignore[call-overload]
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def processes() -> Iterator[Processes]:
    helper = Processes()
    try:
        yield helper
    finally:
        helper.stop_all()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if nvml.available():
        return
    reason = "no NVIDIA GPU with a driver here (NVML unavailable): GPU checks NOT run"
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))
            _skipped_gpu.append(item.nodeid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _skipped_gpu:
        terminalreporter.section("GPU checks skipped", sep="!", yellow=True, bold=True)
        terminalreporter.line(
            f"{len(_skipped_gpu)} GPU tests did not run: no NVIDIA GPU/NVML on this machine. "
            "Run `pytest -m gpu` on a GPU host to check NVML accounting and memory caps.",
            yellow=True,
        )


def env_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}
