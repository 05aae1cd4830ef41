"""Vanished clients give their GPU back: a kernel with no client connected for
``--CumulusKernelManager.disconnected_timeout`` seconds is stopped, its partition released and
the reason kept (410); a live ``%%cumulus`` session and a Cumulus GPU kernel, however idle,
keep their WebSockets and their kernels; a batch job's kernel, which has no client, is exempt.

Nothing here waits a fixed time: a kernel whose client left being stopped is what shows that a
timeout went by, and the idle session is checked after several of them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import start_new_kernel

from chronos import Store, discover
from cumulus_jupyter import kernelspec
from tests.support.gateway import Gateway, remote_session
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

TIMEOUT = "--CumulusKernelManager.disconnected_timeout=2"
STOPPED = "no client was connected for 2s"
ALICE, BOB = "alice-token-" + "a" * 20, "bob-token-" + "b" * 20
USERS = f'--CumulusIdentityProvider.user_tokens={{"{ALICE}": "alice", "{BOB}": "bob"}}'

# A %%cumulus-style client in a process of its own (a notebook's kernel): it starts a session,
# says its kernel's id, then idles until it is killed.
CLIENT = textwrap.dedent(
    """
    import sys, time
    from cumulus_jupyter.connection import GatewaySettings
    from cumulus_jupyter.session import RemoteSession

    session = RemoteSession("doomed", GatewaySettings(sys.argv[1], sys.argv[2]))
    session.start("0.2", "10m", lambda line: None)
    print(session.kernel.id, flush=True)
    time.sleep(600)
    """
)


@pytest.fixture
def culling_gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(tmp_path / "state" / "chronos.sqlite3", tmp_path / "gateway.log", TIMEOUT, USERS)
    try:
        yield gw
    finally:
        gw.stop()


def active_partition_ids(gateway: Gateway) -> set[str]:
    with Store(discover({}), gateway.state) as store:
        return {p.id for p in store.partitions()}


def killed_client(gateway: Gateway) -> dict[str, Any]:
    """The model of a kernel whose client (a session in another process) was killed."""
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, gateway.url, gateway.token],
        stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": os.getcwd()},
    )  # fmt: skip
    try:
        assert client.stdout is not None
        kernel_id = client.stdout.readline().strip()
        model = gateway.get(f"/api/kernels/{kernel_id}").json()
        assert model["connections"] == 1, model
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=60)
        if client.stdout is not None:
            client.stdout.close()
    return model  # type: ignore[no-any-return]


def stopped_for_no_client(gateway: Gateway, model: dict[str, Any]) -> None:
    """Wait until the kernel is gone with the disconnected reason; its partition released."""

    def gone() -> httpx.Response | None:
        response = gateway.get(f"/api/kernels/{model['id']}")
        return response if response.status_code == 410 else None

    response = wait_until(gone, what="the kernel with no client to be stopped")
    message = response.json()["message"]
    assert STOPPED in message and model["cumulus"]["partition_id"] in message, message
    assert model["cumulus"]["partition_id"] not in active_partition_ids(gateway)


@contextlib.contextmanager
def proxy_kernel(gateway: Gateway, prefix: Path) -> Iterator[BlockingKernelClient]:
    """A Cumulus GPU kernel on ``gateway``, started as JupyterLab starts one, its remote kernel
    up; shut down after."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
        mp.setenv("CUMULUS_GATEWAY_URL", gateway.url)
        mp.setenv("CUMULUS_TOKEN", gateway.token)
        name, _ = kernelspec.install("0.2", "10m", prefix=str(prefix))
        km, kc = start_new_kernel(kernel_name=name, startup_timeout=120)
    try:
        assert kc.execute_interactive("x = 1", timeout=120)["content"]["status"] == "ok"
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel()


def printed(outputs: list[dict[str, Any]]) -> str:
    return "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")


@pytest.mark.timeout(400)
def test_idle_clients_live_on_and_a_kernel_whose_client_was_killed_is_stopped(
    culling_gateway: Gateway, tmp_path: Path
) -> None:
    gateway = culling_gateway
    with remote_session(gateway, "idle") as session, proxy_kernel(gateway, tmp_path) as kc:
        idle = {k["id"] for k in gateway.get("/api/kernels").json()}
        assert len(idle) == 2  # the magic's session and the Cumulus GPU kernel's remote
        for _ in range(3):  # each stop shows that a whole timeout went by meanwhile
            stopped_for_no_client(gateway, killed_client(gateway))
            models = gateway.get("/api/kernels").json()
            assert {m["id"] for m in models} == idle and session.alive, models
            assert all(m["connections"] == 1 for m in models), models
        outputs: list[dict[str, Any]] = []
        reply = session.execute("print(6 * 7)", outputs.append)
        assert reply["content"]["status"] == "ok" and printed(outputs) == "42\n", outputs
        outputs = []
        reply = kc.execute_interactive("print(x + 1)", timeout=120, output_hook=outputs.append)
        assert reply["content"]["status"] == "ok" and printed(outputs) == "2\n", outputs
    for kernel_id in idle:
        assert f"kernel {kernel_id}: " not in gateway.log()  # never stopped for want of a client


def test_a_kernel_never_connected_to_is_stopped_and_a_job_is_not(
    culling_gateway: Gateway,
) -> None:
    gateway = culling_gateway
    job = gateway.post(
        "/api/cumulus/jobs",
        {"code": "import time; time.sleep(8); print('done')", "gpu": "0.2", "duration": "10m"},
    ).json()
    stopped_for_no_client(gateway, gateway.start_kernel(KERNEL_GPU="0.2"))
    stopped_for_no_client(gateway, gateway.start_kernel(KERNEL_GPU="0.2"))  # two timeouts by

    def finished() -> dict[str, Any] | None:
        record: dict[str, Any] = gateway.get(f"/api/cumulus/jobs/{job['id']}").json()
        return record if record["state"] in ("completed", "failed", "cancelled") else None

    record = wait_until(finished, what="the job to finish")
    assert record["state"] == "completed", record


def as_user(gateway: Gateway, token: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"token {token}"}
    return httpx.request(method, gateway.url + path, headers=headers, timeout=120, **kwargs)


def test_a_stopped_kernels_reason_is_its_owners_and_its_partition_keeps_it(
    culling_gateway: Gateway,
) -> None:
    gateway = culling_gateway
    started = as_user(gateway, ALICE, "POST", "/api/kernels",
                      json={"name": "cumulus-gpu", "env": {"KERNEL_GPU": "0.2"}})  # fmt: skip
    assert started.status_code == 201, started.text
    model = started.json()
    stopped_for_no_client(gateway, model)
    kernel, partition_id = f"/api/kernels/{model['id']}", model["cumulus"]["partition_id"]
    # alice hears why; bob is told it is not his, as for a live kernel of hers (was alice's
    # reason, her partition and device in it, as a 410)
    mine = as_user(gateway, ALICE, "GET", kernel)
    assert mine.status_code == 410 and STOPPED in mine.json()["message"]
    for method, path in (("GET", kernel), ("DELETE", kernel), ("POST", kernel + "/interrupt")):
        theirs = as_user(gateway, BOB, method, path)
        assert (theirs.status_code, theirs.json()) == (
            403, {"message": f"Kernel {model['id']} belongs to another user",
                  "reason": "PermissionDenied"},
        ), (method, path)  # fmt: skip
    # the partition's own end says why too (was "kernel shut down")
    extend = as_user(gateway, ALICE, "POST", f"/api/cumulus/partitions/{partition_id}/extend",
                     json={"duration": "30m"})  # fmt: skip
    assert extend.status_code == 410 and f"({STOPPED}); an ended" in extend.json()["message"]


def test_an_adopted_kernel_with_no_client_is_stopped_after_the_timeout(
    tmp_path: Path,
) -> None:
    state, log = tmp_path / "state" / "chronos.sqlite3", tmp_path / "gateway.log"
    first = Gateway(state, log, "--CumulusKernelManager.disconnected_timeout=0")  # off
    try:
        model = first.start_kernel(KERNEL_GPU="0.3")
        first.kill()
        second = Gateway(state, log, TIMEOUT)
        try:
            assert second.get(f"/api/kernels/{model['id']}").json()["connections"] == 0
            stopped_for_no_client(second, model)
            assert second.get("/api/kernels").json() == []  # stopped, not left listed
        finally:
            second.stop()
    finally:
        first.stop()


def test_a_negative_timeout_stops_start_up_with_one_clear_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("cumulus-gateway")), "--allow-root", "--port=0",
         "--CumulusKernelManager.disconnected_timeout=-5"],
        capture_output=True, text=True, timeout=120,
        env=os.environ | {"CHRONOS_STATE": str(tmp_path / "state.sqlite3")},
    )  # fmt: skip
    assert done.returncode == 2  # InvalidArgument's exit code
    critical = [line for line in done.stderr.splitlines() if "[C " in line]
    assert len(critical) == 1, done.stderr
    assert "disconnected_timeout must be seconds (0 turns it off), not -5" in critical[0]
    assert "Traceback" not in done.stderr
