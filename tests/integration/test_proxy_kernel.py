"""The Cumulus GPU kernel (local proxy) in front of a real gateway, driven by jupyter_client as
any front end would: everything a local ipykernel does, plus partitions and their errors."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager, start_new_kernel

from chronos import Store, discover
from cumulus_jupyter import kernelspec
from tests.support.gateway import Gateway
from tests.support.messages import iopub_message, shell_reply, status_text

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str]]:
    """A gateway, and a Cumulus kernelspec pointing at it, installed in a private prefix."""
    tmp = tmp_path_factory.mktemp("proxy")
    gw = Gateway(tmp / "state" / "chronos.sqlite3", tmp / "gateway.log")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(tmp / "share" / "jupyter"))
        mp.setenv("CUMULUS_GATEWAY_URL", gw.url)
        mp.setenv("CUMULUS_TOKEN", gw.token)
        name, _ = kernelspec.install("0.5", "30m", prefix=str(tmp))
        try:
            yield gw, name
        finally:
            gw.stop()


@contextlib.contextmanager
def started(
    name: str, now: bool = False, **kwargs: Any
) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    """A proxy kernel started as JupyterLab starts one; shut down (politely unless ``now``)."""
    km, kc = start_new_kernel(kernel_name=name, startup_timeout=60, **kwargs)
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=now)


@pytest.fixture
def kernel(proxied: tuple[Gateway, str]) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    with started(proxied[1]) as (km, kc):
        yield km, kc


def run(
    kc: BlockingKernelClient, code: str, **kwargs: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    outputs: list[dict[str, Any]] = []
    reply = kc.execute_interactive(code, timeout=120, output_hook=outputs.append, **kwargs)
    return reply["content"], outputs


def text(outputs: list[dict[str, Any]], name: str = "stdout") -> str:
    return "".join(
        m["content"]["text"]
        for m in outputs
        if m["msg_type"] == "stream" and m["content"]["name"] == name
    )


def test_kernelspec_display_name_and_listing(proxied: tuple[Gateway, str]) -> None:
    _, name = proxied
    assert name == "cumulus-gpu-0.5-30m"
    listed = subprocess.run(
        [sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    spec = json.loads(listed.stdout)["kernelspecs"][name]["spec"]
    assert (
        spec["display_name"] == "Cumulus GPU (0.5 GPU, 30m)" and spec["interrupt_mode"] == "message"
    )


def test_execute_streams_results_errors_and_partition(
    proxied: tuple[Gateway, str], kernel: Any
) -> None:
    gw, _ = proxied
    _, kc = kernel
    reply, outputs = run(
        kc,
        "import os, sys\nprint(os.environ['CHRONOS_GPU_AMOUNT']); print('err', file=sys.stderr); 6 * 7",
    )
    assert reply["status"] == "ok"
    status = status_text(outputs)  # progress in the first cell: a display, not stderr
    assert "Cumulus: partition p-" in status and "on gpu0 ready (0.5 GPU" in status
    assert text(outputs) == "0.5\n" and text(outputs, "stderr") == "err\n"
    assert [
        m["content"]["data"]["text/plain"] for m in outputs if m["msg_type"] == "execute_result"
    ] == ["42"]
    reply, outputs = run(
        kc, "from IPython.display import HTML, display; display(HTML('<b>hi</b>'))"
    )
    assert [
        m["content"]["data"]["text/html"] for m in outputs if m["msg_type"] == "display_data"
    ] == ["<b>hi</b>"]
    reply, outputs = run(kc, "1 / 0")
    assert reply["status"] == "error" and reply["ename"] == "ZeroDivisionError"
    assert [m["msg_type"] for m in outputs if m["msg_type"] == "error"] == ["error"]
    [model] = gw.get("/api/kernels").json()
    assert model["cumulus"]["amount"] == 0.5


def test_completion_inspection_history_and_is_complete(kernel: Any) -> None:
    _, kc = kernel
    run(kc, "zebra_count = 3")
    complete = kc.complete("zebra_c", 7, reply=True, timeout=60)["content"]
    assert "zebra_count" in complete["matches"]
    inspect = kc.inspect("zebra_count", 5, reply=True, timeout=60)["content"]
    assert inspect["found"] and "int" in inspect["data"]["text/plain"]
    history = kc.history(hist_access_type="tail", n=5, reply=True, timeout=60)["content"]
    assert any("zebra_count = 3" in entry[2] for entry in history["history"])
    reply = shell_reply(kc, kc.is_complete("for i in range(3):"))
    assert reply["content"]["status"] == "incomplete"


def test_stdin_input_reaches_the_remote_kernel(kernel: Any) -> None:
    _, kc = kernel

    def answer(msg: dict[str, Any]) -> None:
        assert msg["content"]["prompt"] == "name? "
        kc.input("Ada")

    reply, outputs = run(kc, "print('hello', input('name? '))", allow_stdin=True, stdin_hook=answer)
    assert reply["status"] == "ok" and text(outputs) == "hello Ada\n"


def test_comms_travel_both_ways(kernel: Any) -> None:
    _, kc = kernel
    run(
        kc,
        "def _t(comm, msg):\n    comm.on_msg(lambda m: comm.send({'echo': m['content']['data']['x'] * 2}))\nget_ipython().kernel.comm_manager.register_target('t', _t)",
    )
    kc.session.send(
        kc.shell_channel.socket, "comm_open", {"comm_id": "c9", "target_name": "t", "data": {}}
    )
    kc.session.send(kc.shell_channel.socket, "comm_msg", {"comm_id": "c9", "data": {"x": 21}})
    while True:
        msg = kc.get_iopub_msg(timeout=60)
        if msg["msg_type"] == "comm_msg":
            assert msg["content"]["data"] == {"echo": 42}
            break


def test_interrupt_restart_keep_the_partition_and_shutdown_releases_it(
    proxied: tuple[Gateway, str],
) -> None:
    gw, name = proxied
    with started(name) as (km, kc):
        run(kc, "x = 1")
        [before] = gw.get("/api/kernels").json()
        msg_id = kc.execute("import time; time.sleep(120)")
        iopub_message(kc, lambda m: m["content"].get("execution_state") == "busy")
        km.interrupt_kernel()
        reply = shell_reply(kc, msg_id)
        assert (
            reply["content"]["status"] == "error"
            and reply["content"]["ename"] == "KeyboardInterrupt"
        )
        km.restart_kernel()
        kc.wait_for_ready(timeout=60)
        reply, outputs = run(kc, "print('x' in dir())")
        assert text(outputs) == "False\n"
        [after] = gw.get("/api/kernels").json()
        assert (
            after["id"] == before["id"]
            and after["cumulus"]["partition_id"] == before["cumulus"]["partition_id"]
        )
    assert gw.get("/api/kernels").json() == []
    with Store(discover({}), gw.state) as store:
        assert store.get(before["cumulus"]["partition_id"]).state.value == "released"


def test_an_unreachable_gateway_is_explained_in_the_cell(
    proxied: tuple[Gateway, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, name = proxied
    monkeypatch.setenv("CUMULUS_GATEWAY_URL", "http://127.0.0.1:9")  # nothing listens there
    with started(name, now=True) as (_km, kc):  # kernel_info answers at once
        reply, outputs = run(kc, "print(1)")
        assert reply["status"] == "error" and reply["ename"] == "Unavailable"
        assert "Cannot reach the Cumulus gateway at http://127.0.0.1:9" in reply["evalue"]
        assert [m["content"]["ename"] for m in outputs if m["msg_type"] == "error"] == [
            "Unavailable"
        ]


def test_a_wrong_token_is_explained_in_the_cell(
    proxied: tuple[Gateway, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, name = proxied
    monkeypatch.setenv("CUMULUS_TOKEN", "wrong")
    with started(name, now=True) as (_km, kc):
        reply, _ = run(kc, "print(1)")
        assert reply["ename"] == "Unauthenticated" and "refused the token" in reply["evalue"]
    assert gw.get("/api/kernels").json() == []


def test_a_malformed_connection_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "conn.json"
    bad.write_text("{not json")
    done = subprocess.run(
        [sys.executable, "-m", "cumulus_jupyter.kernel", "-f", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and f"bad connection file {bad}" in done.stderr


def test_expiry_is_told_in_the_notebook_and_restart_gets_a_new_partition(
    proxied: tuple[Gateway, str],
) -> None:
    import sqlite3
    import time

    gw, name = proxied
    with started(name) as (km, kc):
        run(kc, "y = 2")
        [model] = gw.get("/api/kernels").json()
        with sqlite3.connect(gw.state) as db:
            db.execute(
                "UPDATE partitions SET expires_at = ? WHERE id = ?",
                (time.time() - 1, model["cumulus"]["partition_id"]),
            )
        seen = ""
        seen_states: list[str] = []
        deadline = time.monotonic() + 60
        while "expired" not in seen and time.monotonic() < deadline:
            try:
                msg = kc.get_iopub_msg(timeout=1)
            except queue.Empty:
                continue
            if msg["msg_type"] == "stream":
                seen += msg["content"]["text"]
            if msg["msg_type"] == "status":
                seen_states.append(msg["content"]["execution_state"])
        for _ in range(20):  # the dead status follows the message
            try:
                msg = kc.get_iopub_msg(timeout=0.5)
            except queue.Empty:
                break
            if msg["msg_type"] == "status":
                seen_states.append(msg["content"]["execution_state"])
        assert f"Partition {model['cumulus']['partition_id']} (0.5 GPU on gpu0) expired" in seen
        reply, _ = run(kc, "print(y)")
        assert reply["status"] == "error" and reply["ename"] == "PartitionExpired"
        assert "dead" in seen_states
        km.restart_kernel()
        kc.wait_for_ready(timeout=60)
        reply, outputs = run(kc, "print('fresh')")
        assert reply["status"] == "ok" and text(outputs) == "fresh\n"
        [fresh] = gw.get("/api/kernels").json()
        assert fresh["cumulus"]["partition_id"] != model["cumulus"]["partition_id"]


def test_a_remote_kernel_dying_mid_cell_ends_the_cell_with_a_clear_error(kernel: Any) -> None:
    _, kc = kernel
    run(kc, "z = 1")
    reply, outputs = run(kc, "import os; os._exit(1)")
    assert reply["status"] == "error" and reply["ename"] == "KernelDied"
    assert "restarted in the same partition" in reply["evalue"]
    reply, outputs = run(kc, "print('z' in dir())")  # the gateway restarted it: usable, but fresh
    assert reply["status"] == "ok" and text(outputs) == "False\n"


def test_a_url_that_is_not_a_gateway_is_explained(
    proxied: tuple[Gateway, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.support.gateway import free_port

    _, name = proxied
    port = free_port()
    web = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        monkeypatch.setenv("CUMULUS_GATEWAY_URL", f"http://127.0.0.1:{port}")
        with started(name, now=True) as (_km, kc):
            reply, _ = run(kc, "print(1)")
            assert reply["ename"] == "Unavailable" and "is not a Cumulus gateway" in reply["evalue"]
    finally:
        web.terminate()
        web.wait(timeout=30)


def test_a_dropped_connection_is_resumed_and_no_output_is_lost(
    proxied: tuple[Gateway, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.tcp_relay import TcpRelay

    gw, name = proxied
    relay = TcpRelay(gw.port)
    monkeypatch.setenv("CUMULUS_GATEWAY_URL", f"http://127.0.0.1:{relay.port}")
    try:
        with started(name) as (_km, kc):
            run(kc, "pass")
            msg_id = kc.execute(
                "import time\nfor i in range(30):\n    print(i, flush=True)\n    time.sleep(0.1)"
            )
            lines = ""
            cut = False
            while True:
                msg = kc.get_iopub_msg(timeout=60)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "stream":
                    lines += msg["content"]["text"]
                    if not cut and "5\n" in lines:
                        relay.cut()  # the link drops mid-cell; the kernel prints on meanwhile
                        cut = True
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    break
            assert relay.cuts == 1
            assert lines == "".join(f"{i}\n" for i in range(30))
    finally:
        relay.close()


def test_kernelspecs_install_side_by_side_and_uninstall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    cli = [sys.executable, "-m", "cumulus_jupyter.cli", "kernelspec"]
    for gpu, duration in (("0.5", "1h"), ("2", "30m")):
        done = subprocess.run(
            [*cli, "install", "--prefix", str(tmp_path), "--gpu", gpu, "--duration", duration],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "Installed kernelspec cumulus-gpu-" in done.stdout
    listed = json.loads(
        subprocess.run(
            [sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["kernelspecs"]
    assert listed["cumulus-gpu-0.5-1h"]["spec"]["display_name"] == "Cumulus GPU (0.5 GPU, 1h)"
    assert listed["cumulus-gpu-2-30m"]["spec"]["display_name"] == "Cumulus GPU (2 GPU, 30m)"
    bad = subprocess.run(
        [*cli, "install", "--prefix", str(tmp_path), "--gpu", "2.3"], capture_output=True, text=True
    )
    assert (bad.returncode, bad.stderr) == (
        2,
        "Invalid GPU amount: 2.3. Must be 0.1-0.9 or whole number 1-8\n",
    )
    removed = subprocess.run(
        [*cli, "uninstall", "cumulus-gpu-2-30m"], capture_output=True, text=True
    )
    assert removed.returncode == 0, removed.stderr
    listed = json.loads(
        subprocess.run(
            [sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["kernelspecs"]
    assert "cumulus-gpu-2-30m" not in listed and "cumulus-gpu-0.5-1h" in listed
    missing = subprocess.run([*cli, "uninstall", "nope"], capture_output=True, text=True)
    assert (missing.returncode, missing.stderr) == (3, "No kernelspec named nope\n")


def test_opt_in_sync_copies_the_notebook_directory(
    proxied: tuple[Gateway, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, _ = proxied
    prefix = tmp_path / "prefix"
    monkeypatch.setenv(
        "JUPYTER_PATH", f"{prefix / 'share' / 'jupyter'}{os.pathsep}{os.environ['JUPYTER_PATH']}"
    )
    name, _ = kernelspec.install("0.2", "1h", name="cumulus-sync", prefix=str(prefix), sync=True)
    notebook_dir = tmp_path / "notebooks"
    (notebook_dir / "data").mkdir(parents=True)
    (notebook_dir / "data" / "numbers.csv").write_text("1,2,3\n")
    (notebook_dir / ".secret").write_text("not sent")
    km, kc = start_new_kernel(kernel_name=name, startup_timeout=60, cwd=str(notebook_dir))
    try:
        reply, outputs = run(
            kc,
            "import os; print(open('data/numbers.csv').read().strip(), os.path.exists('.secret'))",
        )
        assert reply["status"] == "ok", text(outputs, "stderr")
        assert text(outputs) == "1,2,3 False\n"
        lines = status_text(outputs).splitlines()
        assert lines[0].startswith("Cumulus: partition p-")
        assert lines[1].startswith(f"Cumulus: synced 1 file (0.0 MiB) from {notebook_dir} to ")
        assert "cumulus-work-" in lines[1]  # the remote kernel's own work directory
        remote_dir = Path(lines[1].rsplit(" to ", 1)[1])
        assert (remote_dir / "data" / "numbers.csv").read_text() == "1,2,3\n"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    assert gw.get("/api/kernels").json() == []
    assert not remote_dir.exists()  # scratch goes with the kernel
    assert not remote_dir.exists()  # scratch goes with the kernel


def test_the_first_cell_shows_the_queue_while_waiting_for_a_partition(
    proxied: tuple[Gateway, str],
) -> None:
    import threading

    gw, name = proxied
    blocker = gw.start_kernel(KERNEL_GPU="0.9")
    with started(name) as (_km, kc):  # answers while queued
        msg_id = kc.execute("print('finally running')")
        shown: list[str] = []  # each state of the cell's Cumulus display, in order
        printed = ""
        kinds: list[str] = []
        released = threading.Event()
        while True:
            msg = kc.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kinds.append(msg["msg_type"])
            if msg["msg_type"] in ("display_data", "update_display_data"):
                shown.append(msg["content"]["data"]["text/plain"])
                if "queue position 1" in shown[-1] and not released.is_set():
                    released.set()
                    assert gw.delete(f"/api/kernels/{blocker['id']}").status_code == 204
            if msg["msg_type"] == "stream":
                assert msg["content"]["name"] == "stdout"  # Cumulus's lines are no stderr
                printed += msg["content"]["text"]
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        waiting = "Cumulus: waiting for a partition: queue position 1 (no device has 0.5 free"
        assert any(text.startswith(waiting) for text in shown), shown
        # one display, then updates of it only; the waiting line gives way to the ready one
        displays = [k for k in kinds if k.endswith("display_data")]
        assert displays[0] == "display_data" and set(displays[1:]) == {"update_display_data"}
        assert shown[-1].startswith("Cumulus: partition p-") and "waiting" not in shown[-1]
        assert printed == "finally running\n"
