"""Checkpoints end to end against a real S3-compatible server (moto's standalone server, through
s3fs) started by the test: save from a ``%%cumulus`` session, lose the GPU host's disk (L1),
resume in a new partition from L2; jobs that resume, and a job that checkpoints before expiry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient

from tests.integration.test_jobs import cumulus
from tests.integration.test_magic import notebook_kernel, run
from tests.support.gateway import Gateway
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, s3: dict[str, Any]
) -> Iterator[tuple[Gateway, Path, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("ckpt")
    l1 = tmp / "l1"
    env = {
        "CUMULUS_CHECKPOINT_DIR": str(l1),
        "CUMULUS_CHECKPOINT_URL": "s3://ckpt/runs",
        "CUMULUS_CHECKPOINT_OPTIONS": json.dumps(s3),
    }
    gw = Gateway(tmp / "state" / "chronos.sqlite3", tmp / "gateway.log", env=env)
    try:
        yield gw, l1, env
    finally:
        gw.stop()


def l2_versions(s3: dict[str, Any], name: str, owner: str = "anonymous") -> list[str]:
    """The complete versions of ``owner``'s ``name`` on L2 (each owner has its own prefix)."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3)
    fs.invalidate_cache()
    try:
        return sorted(
            p.rsplit("/", 1)[-1]
            for p in fs.ls(f"ckpt/runs/{owner}/{name}")
            if fs.exists(f"{p}/manifest.json")
        )
    except FileNotFoundError:
        return []


@pytest.fixture(scope="module")
def notebook(setup: tuple[Gateway, Path, dict[str, str]]) -> Iterator[BlockingKernelClient]:
    with notebook_kernel(setup[0]) as kc:
        yield kc


def test_a_session_resumes_from_l2_in_a_new_partition_after_l1_is_gone(
    notebook: BlockingKernelClient, setup: tuple[Gateway, Path, dict[str, str]], s3: dict[str, Any]
) -> None:
    gw, l1, _ = setup
    reply, _, err, _ = run(
        notebook, "%%cumulus --session first\nimport numpy as np\nw = np.arange(6.0)\nstep = 5"
    )
    assert reply["status"] == "ok", err
    _, out, err, _ = run(notebook, "%cumulus checkpoint w step --name run1 --session first")
    assert "Cumulus: checkpoint run1 v1: w, step" in out and "(copying to L2)" in out, err
    wait_until(lambda: l2_versions(s3, "run1") == ["v1"], what="the copy to L2")
    run(notebook, "%cumulus release first")
    shutil.rmtree(l1)  # the next partition is on a host that never saw this checkpoint

    reply, out, err, _ = run(
        notebook,
        "%%cumulus --session second --resume run1\nstep2 = step + 1\ntotal = float(w.sum())",
    )
    assert reply["status"] == "ok", err
    assert "Cumulus: restored w, step from checkpoint run1 (L2)" in out
    _, out, _, _ = run(notebook, "print(step2, total)")
    assert out == "6 15.0\n"
    run(notebook, "%cumulus release second")
    assert gw.get("/api/cumulus/partitions").json() == []


def test_bad_checkpoint_requests_say_why(notebook: BlockingKernelClient) -> None:
    reply, _, _, _ = run(notebook, "%%cumulus --session third --resume never-saved\npass")
    assert reply["status"] == "error" and reply["ename"] == "NotFound"
    assert "No checkpoint never-saved on this host or in s3://ckpt/runs" in reply["evalue"]
    _, out, err, _ = run(notebook, "%cumulus checkpoint missing_name --session third")
    assert "Nothing named missing_name in the remote kernel" in err + out
    run(notebook, "%cumulus release third")


def test_a_job_resumes_a_checkpoint_another_job_saved(
    setup: tuple[Gateway, Path, dict[str, str]], s3: dict[str, Any]
) -> None:
    gw, l1, _ = setup
    saver = ("import cumulus_jupyter.checkpoint as c\n"
             "print(c.save('jobrun', {'epoch': 3, 'lr': 0.1}, variables=True, wait_l2=True)['version'])")  # fmt: skip
    first = cumulus(gw, "submit", "-c", saver, "--follow")
    assert first.returncode == 0, first.stderr
    shutil.rmtree(l1, ignore_errors=True)
    second = cumulus(
        gw, "submit", "-c", "print('epoch', epoch + 1, 'lr', lr)", "--resume", "jobrun", "--follow"
    )
    assert second.returncode == 0, second.stderr
    assert "Cumulus: restored epoch, lr from checkpoint jobrun (L2)" in second.stdout
    assert "epoch 4 lr 0.1" in second.stdout


def test_a_job_checkpoints_its_variables_a_minute_before_its_partition_ends(
    setup: tuple[Gateway, Path, dict[str, str]], s3: dict[str, Any], tmp_path: Path
) -> None:
    gw, _, env = setup
    code = "x = 6 * 7\nimport time\nprint('working', flush=True)\ntime.sleep(120)"
    submitted = cumulus(gw, "submit", "-c", code, "--duration", "70", "--checkpoint-before-expiry", "x",
                        "--checkpoint-name", "auto")  # fmt: skip
    job_id = submitted.stdout.strip()
    assert submitted.returncode == 0, submitted.stderr
    started = time.monotonic()
    wait_until(lambda: "before expiry, checkpoint auto v1: x" in cumulus(gw, "logs", job_id).stdout,
               timeout=90, what="the checkpoint at T-1 min")  # fmt: skip
    assert time.monotonic() - started < 70  # before the partition ended
    cumulus(gw, "cancel", job_id)
    wait_until(lambda: l2_versions(s3, "auto") == ["v1"], what="the copy to L2")
    probe = subprocess.run(
        [sys.executable, "-c", "import cumulus_jupyter.checkpoint as c; print(c.load('auto'))"],
        env=os.environ | env | {"CUMULUS_CHECKPOINT_DIR": str(tmp_path / "elsewhere"),
                                "CUMULUS_CHECKPOINT_URL": "s3://ckpt/runs/anonymous"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert probe.stdout.strip() == "{'x': 42}", probe.stderr
