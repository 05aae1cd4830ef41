"""`chronos` as a script would use it: real processes, exit codes, exact messages, no change to
stored state on bad input."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

AMOUNT_ERROR = "Invalid GPU amount: 2.3. Must be 0.1-0.9 or whole number 1-8\n"


def chronos(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chronos", *args], capture_output=True, text=True, timeout=120,
        env=env if env is not None else os.environ.copy(),
    )  # fmt: skip


def as_json(*args: str) -> Any:
    done = chronos(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def snapshot() -> Any:
    """Everything stored, minus the countdown that changes by itself."""
    return [{k: v for k, v in p.items() if k != "seconds_left"} for p in as_json("list", "--all")]


def expire_now(state: Path, partition_id: str) -> None:
    """Move a partition's expiry into the past, as the passing of time would."""
    with sqlite3.connect(state) as db:
        db.execute(
            "UPDATE partitions SET expires_at = ? WHERE id = ?", (time.time() - 1, partition_id)
        )


@pytest.fixture
def sleeper():  # type: ignore[no-untyped-def]
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def test_the_issue_example_prints_the_rule_and_exits_non_zero(state_path: Path) -> None:
    before = snapshot()
    done = chronos("create", "0", "2.3", "1h")
    assert (done.returncode, done.stdout, done.stderr) == (2, "", AMOUNT_ERROR)
    assert snapshot() == before


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ("create", "0", "0.25", "1h"),
            2,
            "Invalid GPU amount: 0.25. Must be 0.1-0.9 or whole number 1-8",
        ),
        (
            ("create", "0", "nine", "1h"),
            2,
            "Invalid GPU amount: nine. Must be 0.1-0.9 or whole number 1-8",
        ),
        (
            ("create", "0", "0.5", "30s"),
            2,
            'Invalid duration: 30s. Must be 60 s to 86400 s (24h), e.g. 90, "30m", "2h"',
        ),
        (
            ("create", "0", "0.5", "2d"),
            2,
            'Invalid duration: 2d. Must be 60 s to 86400 s (24h), e.g. 90, "30m", "2h"',
        ),
        (("create", "gpu7", "0.5", "1h"), 2, "Unknown device: gpu7. Known devices: gpu0"),
        (
            ("create", "0", "2", "1h"),
            2,
            "GPU amount 2 needs 2 devices, but only 1 can be chosen from",
        ),
        (("release", "p-123456789abc"), 3, "Unknown partition: p-123456789abc"),
        (("release", "banana"), 2, "Invalid partition id: 'banana'. Ids look like p-1a2b3c4d5e6f"),
        (
            ("create", "0", "0.5", "1h", "--pid", "999999999"),
            2,
            "Invalid pid: 999999999. No such running process",
        ),
    ],
)
def test_bad_input_one_clear_line_and_no_change(
    state_path: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    as_json("create", "0", "0.3", "1h")
    before = snapshot()
    done = chronos(*args)
    assert (done.returncode, done.stderr) == (code, message + "\n")
    assert snapshot() == before


def test_create_list_release_round_trip(state_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    made = as_json("create", "gpu0", "0.5", "30m", "--owner", "ana", "--pid", str(sleeper.pid))
    assert made["devices"] == ["gpu0"] and made["amount"] == 0.5 and made["owner"] == "ana"
    assert made["pids"] == [sleeper.pid] and 1790 < made["seconds_left"] <= 1800
    assert [p["id"] for p in as_json("list")] == [made["id"]]
    devices = as_json("devices")
    assert devices[0]["free"] == 0.5 and devices[0]["kind"] == "cpu"
    released = as_json("release", made["id"])
    assert released["state"] == "released" and released["end_reason"] == "released"
    assert as_json("list") == []
    again = chronos("release", made["id"])
    assert (
        again.returncode == 3 and f"Partition {made['id']} was already released at" in again.stderr
    )
    assert [p["state"] for p in as_json("list", "--all")] == ["released"]


def test_no_capacity_exits_4_with_what_is_free(state_path: Path) -> None:
    as_json("create", "0", "0.7", "1h")
    done = chronos("create", "any", "0.5", "1h")
    assert (done.returncode, done.stderr) == (
        4,
        "no device has 0.5 free (largest free: 0.3 on gpu0)\n",
    )
    refused = chronos("create", "any", "0.5", "1h", "--json")
    error = json.loads(refused.stdout)["error"]
    assert error == {
        "type": "ResourceExhausted",
        "status": 429,
        "message": "no device has 0.5 free (largest free: 0.3 on gpu0)",
    }


def test_human_tables_are_aligned(state_path: Path) -> None:
    chronos("create", "0", "0.3", "1h", "--owner", "a-long-owner-name")
    chronos("create", "0", "0.2", "2h", "--owner", "b")
    lines = chronos("list").stdout.splitlines()
    assert lines[0].split() == [
        "ID",
        "DEVICES",
        "GPU",
        "MEMORY",
        "OWNER",
        "PIDS",
        "EXPIRES",
        "LEFT",
        "STATE",
    ]
    for header in ("GPU", "OWNER", "STATE"):
        column = lines[0].index(header)
        assert all(line[column - 2 : column] == "  " for line in lines[1:]), lines
    devices = chronos("devices").stdout.splitlines()
    assert devices[0].split()[:3] == ["ID", "NAME", "VENDOR"] and devices[1].startswith("gpu0")


def test_help_explains_the_amount_rule() -> None:
    for args in (("--help",), ("create", "--help")):
        done = chronos(*args)
        assert done.returncode == 0
        assert "must be 0.1-0.9 or whole number 1-8" in done.stdout
        assert "Exit codes" in done.stdout


def test_a_corrupt_state_file_exits_5_and_is_left_alone(tmp_path: Path) -> None:
    state = tmp_path / "broken.sqlite3"
    state.write_bytes(b"\x00garbage" * 512)
    done = chronos("list", "--state", str(state))
    assert done.returncode == 5
    assert (
        done.stderr.count("\n") == 1
        and f"State file {state} is corrupt or not a Chronos store" in done.stderr
    )
    assert state.read_bytes() == b"\x00garbage" * 512


def test_a_locked_state_file_exits_5(state_path: Path) -> None:
    as_json("create", "0", "0.1", "1h")
    holder = sqlite3.connect(state_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        done = chronos("create", "0", "0.1", "1h", env=os.environ | {"CHRONOS_LOCK_TIMEOUT": "0.2"})
        assert done.returncode == 5 and "is locked by another process" in done.stderr
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert len(as_json("list")) == 1


def test_env_and_run_confine_a_command(state_path: Path) -> None:
    made = as_json("create", "0", "0.4", "1h")
    exports = chronos("env", made["id"]).stdout
    assert f"export CHRONOS_PARTITION_ID='{made['id']}'" in exports
    assert "export CUDA_VISIBLE_DEVICES=''" in exports and "export PYOPENCL_CTX=" in exports
    code = "import os, sys; print(os.environ['CHRONOS_GPU_AMOUNT'], os.environ['PYOPENCL_CTX']); sys.exit(7)"
    done = chronos("run", "0", "0.6", "1h", "--", sys.executable, "-c", code)
    assert done.returncode == 7  # the command's own exit code
    assert done.stdout.startswith("0.6 ")
    assert "0.6 GPU" in done.stderr  # the partition is announced
    assert [p["id"] for p in as_json("list")] == [made["id"]]  # run's partition was released
    with pytest.raises(AssertionError):
        as_json("run", "0", "0.1", "1h")  # nothing to run


def test_watch_once_stops_the_process_of_an_expired_partition(
    state_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    made = as_json("create", "0", "0.5", "1h", "--pid", str(sleeper.pid))
    expire_now(state_path, made["id"])
    done = chronos("watch", "--once", "--json", "--grace", "10")
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0, done.stderr
    assert [(e["kind"], e["partition_id"]) for e in events] == [
        ("reaped", made["id"]),
        ("terminated", made["id"]),
    ]
    assert events[1]["pid"] == sleeper.pid and events[1]["reason"] == "partition expired"
    assert sleeper.wait(timeout=30) == -signal.SIGTERM


def test_watch_runs_until_sigterm(state_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    watcher = subprocess.Popen(
        [sys.executable, "-m", "chronos", "watch", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().startswith(f"watching {state_path}: expiry")
        made = as_json("create", "0", "0.5", "1h", "--pid", str(sleeper.pid))
        expire_now(state_path, made["id"])
        assert sleeper.wait(timeout=60) == -signal.SIGTERM  # the watcher noticed on its own
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(timeout=30) == 0
        output = watcher.stdout.read()
        assert f"terminated: pid {sleeper.pid} of {made['id']} (partition expired)" in output
    finally:
        if watcher.poll() is None:
            watcher.kill()
        watcher.wait(timeout=30)
        if watcher.stdout:
            watcher.stdout.close()


def test_devices_says_which_are_online(tmp_path: Path) -> None:
    listed = tmp_path / "devices.json"
    state = ("--state", str(tmp_path / "state.sqlite3"))
    env = os.environ | {"CHRONOS_DEVICES": str(listed)}
    device = {"vendor": "other", "memory_bytes": 2**34}
    listed.write_text(json.dumps([device | {"name": "a"}, device | {"name": "b"}]))
    assert chronos("devices", *state, env=env).returncode == 0
    listed.write_text(json.dumps([device | {"name": "a"}]))  # b is gone from this host
    done = chronos("devices", *state, "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert [(d["id"], d["online"]) for d in json.loads(done.stdout)] == [
        ("gpu0", True),
        ("gpu1", False),
    ]
    lines = chronos("devices", *state, env=env).stdout.splitlines()
    online = lines[0].index("ONLINE")
    assert [line[online:].split()[0] for line in lines[1:]] == ["yes", "no"]
