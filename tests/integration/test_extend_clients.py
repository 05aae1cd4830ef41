"""More time for a partition from each way in, end to end on a real gateway: ``%cumulus extend``
in a notebook with the magic, the same line in a Cumulus GPU kernel cell (answered at once,
even while another cell runs), and ``cumulus extend ID 30m`` with its exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import start_new_kernel

from cumulus_jupyter import kernelspec
from tests.integration.test_magic import notebook_kernel, run
from tests.support.gateway import Gateway
from tests.support.messages import iopub_message, shell_reply

pytestmark = pytest.mark.integration

ALICE = "alice-token-" + "a" * 20


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("extend")
    gw = Gateway(
        tmp / "state" / "chronos.sqlite3", tmp / "gateway.log",
        f'--CumulusIdentityProvider.user_tokens={{"{ALICE}": "alice"}}',
        "--CumulusKernelManager.max_duration=2h",
    )  # fmt: skip
    try:
        yield gw
    finally:
        gw.stop()


def expires_at(gw: Gateway, partition_id: str) -> float:
    [found] = [p for p in gw.get("/api/cumulus/partitions").json() if p["id"] == partition_id]
    return float(found["expires_at"])


def cumulus(gw: Gateway, *args: str, token: str = ALICE) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"CUMULUS_GATEWAY_URL": gw.url, "CUMULUS_TOKEN": token}
    return subprocess.run(
        [str(Path(sys.executable).with_name("cumulus")), *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def test_cumulus_extend_on_the_command_line(gateway: Gateway) -> None:
    model = gateway.start_kernel(KERNEL_GPU="0.1", KERNEL_DURATION="10m", KERNEL_USERNAME="alice")
    partition_id = model["cumulus"]["partition_id"]
    before = expires_at(gateway, partition_id)
    try:
        done = cumulus(gateway, "extend", partition_id, "30m")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(
            f"Extended partition {partition_id} by 30m: it now expires at "
        )
        assert expires_at(gateway, partition_id) == before + 1800
        done = cumulus(gateway, "extend", partition_id, "10m", "--json")
        assert json.loads(done.stdout)["expires_at"] == before + 2400

        for args, code, message in [
            (("soon",), 2, "Invalid duration: soon. Must be 60 s to 86400 s"),
            (("2h",), 10, f"Cannot extend partition {partition_id} by 2h: it would last 2h50m"),
        ]:
            done = cumulus(gateway, "extend", partition_id, *args)
            assert (done.returncode, done.stdout) == (code, ""), done.stderr
            assert done.stderr.startswith(message) and done.stderr.count("\n") == 1
        done = cumulus(gateway, "extend", "p-000000000000", "30m")
        assert (done.returncode, done.stderr) == (3, "Unknown partition: p-000000000000\n")
    finally:
        gateway.delete(f"/api/kernels/{model['id']}")
    done = cumulus(gateway, "extend", partition_id, "30m")
    assert done.returncode == 3 and "an ended partition cannot be extended" in done.stderr


def test_percent_cumulus_extend_in_a_notebook_with_the_magic(gateway: Gateway) -> None:
    with notebook_kernel(gateway) as kc:
        run(kc, "%%cumulus --session ext --gpu 0.1 --duration 10m\nx = 1")
        [model] = gateway.get("/api/kernels").json()
        partition_id = model["cumulus"]["partition_id"]
        before = expires_at(gateway, partition_id)
        reply, out, err, _ = run(kc, "%cumulus extend 30m")
        assert reply["status"] == "ok" and err == ""
        assert out.startswith(f"Cumulus: Extended partition {partition_id} by 30m: it now expires")
        assert expires_at(gateway, partition_id) == before + 1800
        _, out, err, _ = run(kc, "%cumulus extend soon")
        assert out == "" and err.startswith("InvalidArgument: Invalid duration: soon. Must be 60 s")
        _, _, err, _ = run(kc, "%cumulus extend 30m --session nope")
        assert err == "InvalidArgument: No session 'nope': run a %%cumulus cell first\n"
        _, out, _, _ = run(
            kc, "from cumulus_jupyter.magic import CumulusMagics\n"
            "print('extend DURATION: add DURATION' in CumulusMagics.cumulus_line.__doc__)",
        )  # fmt: skip
        assert out == "True\n"  # %cumulus? lists it
        run(kc, "%cumulus release ext")


@pytest.fixture
def gpu_kernel(gateway: Gateway, tmp_path: Path) -> Iterator[Any]:
    """A Cumulus GPU kernel (the local proxy) on the gateway, as JupyterLab starts one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
        mp.setenv("CUMULUS_GATEWAY_URL", gateway.url)
        mp.setenv("CUMULUS_TOKEN", ALICE)
        name, _ = kernelspec.install("0.1", "10m", prefix=str(tmp_path))
        km, kc = start_new_kernel(kernel_name=name, startup_timeout=60)
    try:
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel()


def test_percent_cumulus_extend_in_a_cumulus_gpu_kernel_cell(
    gateway: Gateway, gpu_kernel: Any
) -> None:
    kc = gpu_kernel
    assert kc.execute_interactive("x = 41", timeout=120)["content"]["status"] == "ok"
    [model] = gateway.get("/api/kernels").json()
    partition_id = model["cumulus"]["partition_id"]
    before = expires_at(gateway, partition_id)

    # a cell waits for input (it runs on); the extension is answered meanwhile
    waiting = kc.execute("answer = input('go? ')", allow_stdin=True)
    assert kc.get_stdin_msg(timeout=60)["content"]["prompt"] == "go? "
    extending = kc.execute("%cumulus extend 30m")
    reply = shell_reply(kc, extending)["content"]
    assert reply["status"] == "ok"
    said = iopub_message(
        kc, lambda m: m["parent_header"].get("msg_id") == extending and m["msg_type"] == "stream"
    )
    assert said["content"]["name"] == "stdout"
    assert said["content"]["text"].startswith(
        f"Cumulus: Extended partition {partition_id} by 30m: it now expires at "
    )
    assert expires_at(gateway, partition_id) == before + 1800
    kc.input("yes")
    assert shell_reply(kc, waiting)["content"]["status"] == "ok"

    outputs: list[dict[str, Any]] = []
    reply = kc.execute_interactive("%cumulus extend 2h", timeout=60, output_hook=outputs.append)
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "Conflict"
    assert "max_duration is 2h; it can be extended by 1h20m at most" in reply["content"]["evalue"]
    reply = kc.execute_interactive("%cumulus status", timeout=60)["content"]
    assert reply["ename"] == "InvalidArgument"
    assert reply["evalue"].startswith("%cumulus status is not a command of the Cumulus GPU kernel")
    outputs = []
    kc.execute_interactive("print(x + 1, answer)", timeout=60, output_hook=outputs.append)
    assert [m["content"]["text"] for m in outputs if m["msg_type"] == "stream"] == ["42 yes\n"]


def test_percent_cumulus_extend_as_the_first_cell_with_no_gateway_says_why(
    tmp_path: Path,
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
        mp.setenv("CUMULUS_GATEWAY_URL", "http://127.0.0.1:9")  # nothing listens there
        name, _ = kernelspec.install("0.1", "10m", prefix=str(tmp_path))
        km, kc = start_new_kernel(kernel_name=name, startup_timeout=60)
    try:
        reply = kc.execute_interactive("%cumulus extend 30m", timeout=120)["content"]
        assert reply["status"] == "error" and reply["ename"] == "Unavailable"
        assert "Cannot reach the Cumulus gateway at http://127.0.0.1:9" in reply["evalue"]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
