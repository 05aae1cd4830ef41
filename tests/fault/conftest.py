"""The fault tier: a real gateway on loopback, and what every fault test ends with (the state
file whole, nothing logged as unhandled, no kernel left)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psutil

from tests.support.gateway import Gateway
from tests.support.wait import wait_until

# What an exception nobody handled leaves in the gateway's log: tornado's and jupyter_server's
# words for one, or a traceback under one of the gateway's records (indented by its log
# format). Kernels' own stderr shares the file unindented, and a 5xx we provoke is logged at
# error level as an answer, so neither counts.
UNHANDLED = (
    "Unhandled error",
    "Uncaught exception",
    "Exception in callback",
    "    Traceback (most recent call last)",
)


def integrity(state: Path) -> str:
    """SQLite's own check of the whole state file: ``ok`` when nothing is half-written."""
    with sqlite3.connect(state, timeout=30) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def unhandled(gw: Gateway) -> list[str]:
    """Lines of the gateway's log that show an exception nobody handled."""
    return [line for line in gw.log().splitlines() if any(u in line for u in UNHANDLED)]


def assert_recovered(gw: Gateway) -> None:
    """Healthy, the state file whole, nothing unhandled; then every kernel deleted and its
    partition given back, no kernel process left."""
    assert gw.get("/api/cumulus/health").json()["status"] == "ok"
    assert integrity(gw.state) == "ok"
    assert not unhandled(gw), "\n".join(unhandled(gw)[:20]) + "\n" + gw.log()[-6000:]
    for kernel in gw.get("/api/kernels").json():
        assert gw.delete(f"/api/kernels/{kernel['id']}").status_code == 204
    assert gw.get("/api/cumulus/partitions").json() == []
    assert gw.proc is not None
    process = psutil.Process(gw.proc.pid)
    wait_until(lambda: not process.children(recursive=True), 60, "no kernel process left")
