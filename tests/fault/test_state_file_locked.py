"""The state file locked by another process for 30 s: a child process holds SQLite's exclusive
lock on it (``BEGIN EXCLUSIVE`` and a write; the file is in WAL mode, so readers go on and
every writer waits) while clients keep calling the gateway. Every answer meanwhile is either the normal one
(it waited for the lock) or a 503 that says the state file is locked by another process; none
is a 500 and nothing is logged as unhandled. After the lock is gone the state file passes
SQLite's integrity check, the running kernel has its partition and its variables (a cell it
ran through the lock delivered every line), and new kernels start.

Seen here: reads (health, kernels, partitions) are answered at once (the file is in WAL mode
and the expiry supervisor's tick only reads); a kernel start waits for the lock up to
``CHRONOS_LOCK_TIMEOUT`` (10 s) and is then refused with 503 "... is locked by another process;
gave up after waiting (create)". That wait is on the gateway's event loop: kernel output and
other requests are held up meanwhile, and arrive after it.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import Processes
from tests.fault.conftest import assert_recovered, integrity
from tests.support.gateway import Gateway
from tests.support.kernel_ws import KernelSocket
from tests.support.wait import wait_until

pytestmark = [pytest.mark.fault, pytest.mark.timeout(240)]

HOLD_S = 30
LOCKER = f"""
import sqlite3, time
db = sqlite3.connect(STATE, isolation_level=None, timeout=60)
db.execute("BEGIN EXCLUSIVE")
db.execute("CREATE TABLE IF NOT EXISTS fault_lock (at REAL)")
db.execute("INSERT INTO fault_lock VALUES (?)", (time.time(),))
print("locked", flush=True)
time.sleep({HOLD_S})
db.execute("ROLLBACK")
db.close()
"""
LOCKED = "is locked by another process"
COUNT = f"import time\nfor n in range({HOLD_S}):\n    print(n, flush=True)\n    time.sleep(0.5)"


def run(gateway: Gateway, kernel_id: str, code: str) -> str:
    async def go() -> str:
        ws = await KernelSocket.open(gateway.url, gateway.token, kernel_id)
        try:
            return (await ws.execute(code, timeout=120)).stdout
        finally:
            await ws.close()

    return asyncio.run(go())


def count_through(gateway: Gateway, kernel_id: str, started: threading.Event) -> str:
    async def go() -> str:
        ws = await KernelSocket.open(gateway.url, gateway.token, kernel_id)
        try:
            msg_id = await ws.start_execute(COUNT)
            await ws.wait_for(lambda m: m["msg_type"] == "stream")
            started.set()
            return "0\n" + (await ws.finish(msg_id, timeout=180)).stdout
        finally:
            await ws.close()

    return asyncio.run(go())


def answer(response: httpx.Response) -> str:
    """``ok``, ``locked`` (a 503 saying so) or the unexpected status and body."""
    if response.status_code < 300:
        return "ok"
    if response.status_code == 503 and LOCKED in response.json()["message"]:
        return "locked"
    return f"{response.status_code} {response.text[:300]}"


def test_the_state_file_locked_for_30_s_makes_requests_wait_or_fail_clearly(
    gateway: Gateway, processes: Processes, tmp_path: Path
) -> None:
    running = gateway.start_kernel(KERNEL_GPU="0.3")
    assert run(gateway, running["id"], "x = 1\nprint(x)") == "1\n"

    with ThreadPoolExecutor(max_workers=5) as pool:
        # a cell printing through the lock: its output waits with the gateway, none is lost
        started = threading.Event()
        counted = pool.submit(count_through, gateway, running["id"], started)
        assert started.wait(60)
        out = tmp_path / "locker.out"
        with out.open("wb") as stdout:
            state = repr(str(gateway.state))
            locker = processes.python(LOCKER.replace("STATE", state), stdout=stdout)
        wait_until(lambda: out.read_text() == "locked\n", 60, "the child process to hold the lock")
        calls = [
            lambda: gateway.get("/api/cumulus/health"),
            lambda: gateway.get("/api/kernels"),
            lambda: gateway.get("/api/cumulus/partitions"),
            lambda: gateway.post(
                "/api/kernels", {"name": "cumulus-gpu", "env": {"KERNEL_GPU": "0.2"}}
            ),
        ]
        answers = [answer(r) for r in pool.map(lambda call: call(), calls)]
        while locker.poll() is None:  # keep asking for as long as the lock is held
            answers += [answer(r) for r in pool.map(lambda call: call(), calls[:3])]
    assert locker.returncode == 0
    assert set(answers) <= {"ok", "locked"}, answers
    assert counted.result().split() == [str(n) for n in range(HOLD_S)]

    assert integrity(gateway.state) == "ok"
    assert run(gateway, running["id"], "print(x + 1)") == "2\n"
    assert any(
        p["id"] == running["cumulus"]["partition_id"]
        for p in gateway.get("/api/cumulus/partitions").json()
    )
    again = gateway.start_kernel(KERNEL_GPU="0.2")
    assert run(gateway, again["id"], "print('after the lock')") == "after the lock\n"
    assert_recovered(gateway)
