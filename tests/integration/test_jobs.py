"""Batch jobs through the ``cumulus`` CLI and a real gateway: submit, follow, get, list, logs,
cancel; state and output kept across a gateway restart and pruned after their retention."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chronos import Store, discover
from tests.integration.test_gateway_operations import check
from tests.support.gateway import Gateway
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


def cumulus(gateway: Gateway, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"CUMULUS_GATEWAY_URL": gateway.url, "CUMULUS_TOKEN": gateway.token}
    return subprocess.run(
        [sys.executable, "-m", "cumulus_jupyter.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def job(gateway: Gateway, job_id: str) -> dict[str, Any]:
    done = cumulus(gateway, "get", job_id, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def active_partitions(gateway: Gateway) -> list[Any]:
    with Store(discover({}), gateway.state) as store:
        return store.partitions()


SCRIPT = """\
import os, numpy as np
print("job", os.environ["CUMULUS_JOB_ID"], "fraction", os.environ["CHRONOS_MEMORY_FRACTION"])
for step in range(3):
    print("step", step, flush=True)
print("sum", int(np.arange(10).sum()))
"""


def test_a_script_runs_as_a_job_and_its_output_streams_back(
    gateway: Gateway, tmp_path: Path
) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    done = cumulus(gateway, "submit", str(script), "--gpu", "0.3", "--duration", "10m", "--follow")
    assert done.returncode == 0, done.stderr
    assert "fraction 0.3" in done.stdout and "step 2\nsum 45\n" in done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert " completed in " in last and last.endswith("on gpu0")
    job_id = last.split()[0]

    record = job(gateway, job_id)
    assert record["state"] == "completed" and record["name"] == "train.py"
    assert record["gpu"] == "0.3" and record["device"] == "gpu0" and record["runtime_s"] > 0
    assert "code" not in record
    check(record, "Job")  # as gateway/openapi.yaml documents it
    logs = cumulus(gateway, "logs", job_id)
    assert logs.returncode == 0 and logs.stdout == done.stdout
    listed = cumulus(gateway, "list")
    assert listed.stdout.splitlines()[0].split() == [
        "ID",
        "USER",
        "STATE",
        "GPU",
        "DEVICE",
        "STARTED",
        "RUNTIME",
    ]
    assert any(
        line.startswith(job_id) and " completed " in line for line in listed.stdout.splitlines()
    )
    assert active_partitions(gateway) == []  # released when the job ended
    assert gateway.get("/api/kernels").json() == []


def test_a_failing_job_says_why_and_keeps_its_traceback(gateway: Gateway) -> None:
    done = cumulus(gateway, "submit", "-c", "print('before')\n1 / 0", "--follow")
    assert done.returncode == 1
    assert "before" in done.stdout and "ZeroDivisionError" in done.stdout
    assert done.stderr.strip().splitlines()[-1].endswith(": ZeroDivisionError: division by zero")
    (record,) = json.loads(cumulus(gateway, "list", "--json").stdout)
    assert record["state"] == "failed" and record["error"] == "ZeroDivisionError: division by zero"


def test_a_job_is_seen_ended_only_once_its_kernel_and_partition_are_gone(
    gateway: Gateway,
) -> None:
    # the kernel takes three seconds to exit after its shutdown request: a job marked completed
    # before its kernel was down showed "completed" with the kernel and partition still there
    slow_exit = "import atexit, time\natexit.register(time.sleep, 3)\nprint('trained')"
    done = cumulus(gateway, "submit", "-c", slow_exit, "--follow")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "trained\n"
    assert active_partitions(gateway) == [] and gateway.get("/api/kernels").json() == []


def test_a_running_job_is_cancelled_and_its_partition_released(gateway: Gateway) -> None:
    submitted = cumulus(
        gateway, "submit", "-c", "import time\nprint('up', flush=True)\ntime.sleep(300)"
    )
    job_id = submitted.stdout.strip()
    assert submitted.returncode == 0 and job_id.startswith("j-")
    wait_until(lambda: "up" in cumulus(gateway, "logs", job_id).stdout, what="the job to run")
    cancelled = cumulus(gateway, "cancel", job_id)
    assert cancelled.returncode == 130 and f"{job_id} cancelled" in cancelled.stderr
    assert job(gateway, job_id)["state"] == "cancelled"
    assert active_partitions(gateway) == [] and gateway.get("/api/kernels").json() == []


def test_a_queued_job_shows_its_position_then_runs(gateway: Gateway) -> None:
    holder = gateway.start_kernel(KERNEL_GPU="1")
    follower = subprocess.Popen(
        [sys.executable, "-m", "cumulus_jupyter.cli", "submit", "-c", "print('ran')", "--follow"],
        env=os.environ | {"CUMULUS_GATEWAY_URL": gateway.url, "CUMULUS_TOKEN": gateway.token},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert follower.stderr is not None
        submitted = follower.stderr.readline()
        assert submitted.startswith("submitted j-")
        job_id = submitted.split()[1]
        progress = follower.stderr.readline()  # the first poll finds it waiting: the GPU is held
        assert progress.startswith(f"{job_id} pending: "), progress
        wait_until(lambda: job(gateway, job_id).get("queue"), what="the job in the queue")
        assert "queue position 1" in progress or "starting its kernel" in progress
        assert gateway.delete(f"/api/kernels/{holder['id']}").status_code == 204
        out, err = follower.communicate(timeout=120)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 0 and out == "ran\n" and f"{job_id} completed" in err
    assert job(gateway, job_id)["state"] == "completed"


def test_jobs_survive_a_gateway_restart_and_are_pruned_after_their_retention(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state" / "chronos.sqlite3"
    gw = Gateway(state, tmp_path / "gateway.log")
    try:
        finished = cumulus(gw, "submit", "-c", "print('kept')", "--follow").stderr.split()[1]
        running = cumulus(
            gw, "submit", "-c", "import time\nprint('up', flush=True)\ntime.sleep(300)"
        ).stdout.strip()
        folder = tmp_path / "sleeper"
        folder.mkdir()
        (folder / "main.py").write_text(
            "import time\n\ndef main():\n    print('up', flush=True)\n    time.sleep(300)\n"
        )
        directory = cumulus(gw, "submit", str(folder), "--gpu", "0.1").stdout.strip()

        def up(job_id: str) -> Callable[[], bool]:
            return lambda: "up" in cumulus(gw, "logs", job_id).stdout

        for job_id in (running, directory):
            wait_until(up(job_id), what="the job to run")
        gw.kill()  # SIGKILL mid-job
        gw.start()
        assert job(gw, finished)["state"] == "completed"
        assert cumulus(gw, "logs", finished).stdout == "kept\n"
        lost = job(gw, running)
        assert (
            lost["state"] == "failed" and lost["error"] == "the gateway restarted while the job ran"
        )
        document = job(gw, directory)["result"]
        assert (document["status"], document["error_type"]) == ("error", "GatewayRestarted")
        assert not list(state.parent.glob("*.jobs/*.zip"))  # the zip is not kept past its run
        wait_until(lambda: active_partitions(gw) == [], what="the lost job's partition released")
    finally:
        gw.stop()
    pruned = Gateway(state, tmp_path / "gateway.log", "--CumulusKernelManager.job_retention=0.01")
    try:
        gone = cumulus(pruned, "get", finished)
        assert gone.returncode == 3 and f"No job {finished}" in gone.stderr
    finally:
        pruned.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "Give a script file or -c CODE (not both)"),
        (("nowhere.py",), "Cannot read nowhere.py"),
        (
            ("-c", "pass", "--gpu", "2.3"),
            "Invalid GPU amount: 2.3. Must be 0.1-0.9 or whole number 1-8",
        ),
        (("-c", "pass", "--duration", "10s"), "Invalid duration: 10s"),
    ],
)
def test_bad_submissions_are_refused_with_one_line(
    gateway: Gateway, args: tuple[str, ...], message: str
) -> None:
    done = cumulus(gateway, "submit", *args)
    assert done.returncode == 2 and message in done.stderr
    assert json.loads(cumulus(gateway, "list", "--json").stdout) == []


def test_unknown_jobs_are_not_found(gateway: Gateway) -> None:
    for command in ("get", "logs", "cancel"):
        done = cumulus(gateway, command, "j-000000000000")
        assert done.returncode == 3 and "No job j-000000000000" in done.stderr
