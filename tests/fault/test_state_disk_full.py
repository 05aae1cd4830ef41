"""The state disk full: the gateway's state directory is a small tmpfs (mounted by the test,
as root, and unmounted after), filled to the last byte while a kernel runs. A new kernel is
refused with a 503 (Unavailable) naming the state file and "database or disk is full", nothing of the refused request
is left (no partition, no kernel record, no process), the running kernel runs on, and once
space is freed the gateway starts kernels again; SQLite's integrity check passes throughout."""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fault.conftest import assert_recovered, integrity
from tests.support.gateway import Gateway
from tests.support.kernel_ws import printed

pytestmark = [pytest.mark.fault, pytest.mark.timeout(180)]

TMPFS_SIZE = "16m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


@pytest.fixture
def gateway(tmp_path: Path, small_disk: Path) -> Iterator[Gateway]:
    gw = Gateway(small_disk / "state" / "chronos.sqlite3", tmp_path / "gateway.log")
    try:
        yield gw
    finally:
        gw.stop()


def fill(disk: Path) -> Path:
    """Write a file until the disk has no byte left; the file."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
        with contextlib.suppress(OSError):
            while True:  # the last few bytes
                f.write(b"\0")
    with pytest.raises(OSError, match="No space left on device") as full:
        (disk / "probe").write_bytes(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    return filler


def run(gateway: Gateway, kernel_id: str, code: str) -> str:
    return printed(gateway.url, gateway.token, kernel_id, code)


def test_a_full_state_disk_refuses_new_kernels_clearly_and_recovers(
    gateway: Gateway, small_disk: Path
) -> None:
    running = gateway.start_kernel(KERNEL_GPU="0.3")
    assert run(gateway, running["id"], "x = 20\nprint(x)") == "20\n"

    filler = fill(small_disk)
    refused = gateway.post("/api/kernels", {"name": "cumulus-gpu", "env": {"KERNEL_GPU": "0.2"}})
    assert refused.status_code == 503, refused.text  # Unavailable: the state cannot be written
    assert refused.json()["reason"] == "Unavailable"
    assert "database or disk is full" in refused.json()["message"]
    assert str(gateway.state) in refused.json()["message"]
    assert [k["id"] for k in gateway.get("/api/kernels").json()] == [running["id"]]
    [held] = gateway.get("/api/cumulus/partitions").json()
    assert held["id"] == running["cumulus"]["partition_id"]
    assert run(gateway, running["id"], "print(x + 1)") == "21\n"  # the running kernel runs on
    assert integrity(gateway.state) == "ok"

    filler.unlink()
    again = gateway.start_kernel(KERNEL_GPU="0.2")
    assert run(gateway, again["id"], "print('written again')") == "written again\n"
    assert_recovered(gateway)
