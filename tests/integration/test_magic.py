"""``%%cumulus`` in a real local ipykernel, against a real gateway: remote execution, variables
both ways, sessions, errors."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import start_new_kernel

from tests.support.gateway import Gateway
from tests.support.messages import shell_reply, status_text
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def notebook(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[BlockingKernelClient, Gateway]]:
    """A local ipykernel (the user's notebook) with the extension loaded, and a gateway."""
    with gateway_and_notebook(tmp_path_factory.mktemp("magic")) as both:
        yield both


@contextlib.contextmanager
def gateway_and_notebook(tmp: Path) -> Iterator[tuple[BlockingKernelClient, Gateway]]:
    """A gateway with its state in ``tmp`` and a notebook kernel on it; both stopped after."""
    # unsandboxed: the pip test installs from the test's own private temp dir, which no
    # sandboxed kernel sees (test_sandbox.py runs %%cumulus cells in sandboxed kernels)
    gw = Gateway(
        tmp / "state" / "chronos.sqlite3", tmp / "gateway.log", "--LocalRuntime.sandbox=none"
    )
    try:
        with notebook_kernel(gw) as kc:
            yield kc, gw
    finally:
        gw.stop()


@contextlib.contextmanager
def notebook_kernel(gw: Gateway, url: str | None = None) -> Iterator[BlockingKernelClient]:
    """A local ipykernel pointed at ``gw`` (through ``url`` if given) with the extension
    loaded, shut down after."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUMULUS_GATEWAY_URL", url or gw.url)
        mp.setenv("CUMULUS_TOKEN", gw.token)
        km, kc = start_new_kernel(kernel_name="python3", startup_timeout=60)
    try:
        run(kc, "%load_ext cumulus_jupyter")
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def run(
    kc: BlockingKernelClient, code: str
) -> tuple[dict[str, Any], str, str, list[dict[str, Any]]]:
    outputs: list[dict[str, Any]] = []
    reply = kc.execute_interactive(code, timeout=180, output_hook=outputs.append)["content"]
    out = "".join(
        m["content"]["text"]
        for m in outputs
        if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
    )
    err = "".join(  # what the cell shows in red: stderr, then its error's lines
        m["content"]["text"]
        if m["msg_type"] == "stream"
        else "".join(f"{strip_ansi(line)}\n" for line in m["content"]["traceback"])
        for m in outputs
        if (m["msg_type"] == "stream" and m["content"]["name"] == "stderr")
        or m["msg_type"] == "error"
    )
    return reply, out, err, outputs


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _session_attr(kc: BlockingKernelClient, session: str, attribute: str) -> str:
    """``str()`` of an attribute of a magic session, read in the notebook kernel."""
    _, out, _, _ = run(
        kc,
        f"print(get_ipython().magics_manager.registry['CumulusMagics'].sessions[{session!r}]"
        f".{attribute})",
    )
    return out.strip()


def _kernel_of(kc: BlockingKernelClient, session: str) -> str:
    return _session_attr(kc, session, "kernel.id")


def _status_once_lost(kc: BlockingKernelClient, session: str) -> str:
    def lost_line() -> str | None:
        _, out, _, _ = run(kc, "%cumulus status")
        line = next(x for x in out.splitlines() if x.startswith(f"{session}:"))
        return line if "lost" in line else None

    return wait_until(lost_line, 60, f"session {session} to report lost")


def test_a_cell_runs_remotely_with_variables_both_ways(notebook: Any) -> None:
    kc, gw = notebook
    run(kc, "import numpy as np\nx = np.arange(6.0).reshape(2, 3)")
    reply, out, err, outputs = run(
        kc,
        "%%cumulus --gpu 0.5 --duration 30m\nimport numpy as np, os\ny = x @ x.T\nwhere = os.environ['CHRONOS_PARTITION_ID']\nprint(y.shape)",
    )
    assert reply["status"] == "ok", err
    assert out == "(2, 2)\n"
    assert err == ""  # Cumulus's own lines are a display, not stderr
    status = status_text(outputs)
    assert "Cumulus: partition p-" in status and "ready (0.5 GPU" in status
    reply, out, _, _ = run(kc, "print(y.tolist(), where.startswith('p-'))")  # y and where came back
    assert out == "[[5.0, 14.0], [14.0, 50.0]] True\n"
    [kernel] = gw.get("/api/kernels").json()
    assert kernel["cumulus"]["amount"] == 0.5


def test_sessions_reuse_one_remote_kernel_until_released(notebook: Any) -> None:
    kc, gw = notebook
    run(kc, "%%cumulus --session s1\nimport os\nremote_pid = os.getpid()")
    run(kc, "first = remote_pid")
    run(kc, "%%cumulus --session s1\nimport os\nremote_pid = os.getpid()")
    _, out, _, _ = run(kc, "print(first == remote_pid)")
    assert out == "True\n"
    _, out, _, _ = run(kc, "%cumulus status")
    assert "s1: partition p-" in out and "0.5 GPU" in out
    before = len(gw.get("/api/cumulus/partitions").json())
    _, out, _, _ = run(kc, "%cumulus release s1")
    assert out == "Released session s1\n"
    assert len(gw.get("/api/cumulus/partitions").json()) == before - 1


def test_notebook_functions_classes_and_lambdas_travel_by_value(notebook: Any) -> None:
    kc, _ = notebook
    run(
        kc,
        "def double(a):\n    return a * 2\nclass Box:\n    def __init__(self, v): self.v = v\nsquare = lambda n: n * n\nfactor = 3\ndef scaled(n):\n    return n * factor",
    )
    reply, _, err, _ = run(kc, "%%cumulus\nresult = (double(21), Box(7).v, square(4), scaled(5))")
    assert reply["status"] == "ok", err
    _, out, _, _ = run(kc, "print(result)")
    assert out == "(42, 7, 16, 15)\n"


def test_a_remote_exception_is_raised_locally_with_the_remote_traceback(notebook: Any) -> None:
    kc, _ = notebook
    reply, _, _, outputs = run(kc, "%%cumulus\ndef inner():\n    return 1 / 0\ninner()")
    # named and valued as the remote kernel named it, as the same cell run here would be
    assert (reply["status"], reply["ename"], reply["evalue"]) == (
        "error",
        "ZeroDivisionError",
        "division by zero",
    )
    traceback = "\n".join(reply["traceback"])
    assert "ZeroDivisionError" in traceback and "inner()" in traceback
    [error] = [m["content"] for m in outputs if m["msg_type"] == "error"]
    assert (error["ename"], error["evalue"]) == ("ZeroDivisionError", "division by zero")
    reply, out, err, _ = run(kc, "%%cumulus\nx = (1,\nprint('never')")  # the remote's own
    assert (reply["status"], reply["ename"], out) == ("error", "SyntaxError", ""), err
    assert "raised in the remote kernel: SyntaxError" in err


def test_an_unpicklable_variable_is_named_and_nothing_runs(notebook: Any) -> None:
    kc, _ = notebook
    run(kc, "gen = (i for i in range(3))\nmarker = 'local'")
    reply, out, err, _ = run(kc, "%%cumulus\nmarker = 'remote'\nprint(list(gen))")
    assert reply["status"] == "error" and "Cannot send 'gen' (generator)" in err
    assert out == "" and len(err.strip().splitlines()) == 1, err
    reply, _, err, _ = run(kc, "%cumulus release no-such-session")
    assert (reply["status"], err) == (
        "error",
        "InvalidArgument: No session named no-such-session\n",
    )
    _, out, _, _ = run(kc, "print(marker)")
    assert out == "local\n"


def test_rich_outputs_and_bad_options(notebook: Any) -> None:
    kc, _ = notebook
    _, _, _, outputs = run(
        kc,
        "%%cumulus\nfrom IPython.display import HTML, display\ndisplay(HTML('<table><tr><td>1</td></tr></table>'))",
    )
    assert [
        m["content"]["data"]["text/html"] for m in outputs if m["msg_type"] == "display_data"
    ] == ["<table><tr><td>1</td></tr></table>"]
    _, _, err, _ = run(kc, "%%cumulus --gpu 2.3\npass")
    assert "InvalidArgument: Invalid GPU amount: 2.3. Must be 0.1-0.9 or whole number 1-8" in err
    _, _, err, _ = run(kc, "%%cumulus --frobnicate\npass")
    assert "Unknown option: --frobnicate" in err


def test_an_unchanged_large_array_is_not_sent_again(notebook: Any) -> None:
    kc, _ = notebook
    run(
        kc,
        "import numpy as np\nbig = np.ones(4_000_000)\nmagics = get_ipython().magics_manager.registry['CumulusMagics']",
    )
    run(kc, "%%cumulus --session big\ntotal = big.sum()")
    reply, out, err, outs = run(
        kc, "sent = magics.sessions['big'].sent_bytes\nprint(total, sent >= big.nbytes)"
    )
    assert reply["status"] == "ok", (reply, err, outs)
    assert out == "4000000.0 True\n"
    run(kc, "%%cumulus --session big\ntotal = big.sum() * 2")
    _, out, _, _ = run(kc, "print(total, magics.sessions['big'].sent_bytes == sent)")
    assert out == "8000000.0 True\n"  # the 32 MB array did not travel twice
    run(kc, "big[0] = 5")
    run(kc, "%%cumulus --session big\ntotal = big.sum()")
    _, out, _, _ = run(kc, "print(total, magics.sessions['big'].sent_bytes > sent)")
    assert out == "4000004.0 True\n"
    run(kc, "%cumulus release big")


def test_interrupting_the_local_cell_interrupts_the_remote_one(notebook: Any) -> None:
    import os
    import signal

    kc, _ = notebook
    _, out, _, _ = run(kc, "import os; print(os.getpid())")
    local_pid = int(out)
    run(kc, "%%cumulus --session intr\nready = 1")
    msg_id = kc.execute(
        "%%cumulus --session intr\nimport time\nprint('sleeping', flush=True)\ntime.sleep(120)"
    )
    while True:  # wait until the remote cell runs
        msg = kc.get_iopub_msg(timeout=120)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            break
    os.kill(local_pid, signal.SIGINT)  # what the notebook's interrupt button does
    reply = shell_reply(kc, msg_id, timeout=120)
    assert (
        reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    )
    _, out, _, _ = run(kc, "%%cumulus --session intr\nprint('still usable', ready)")
    assert out == "still usable 1\n"
    run(kc, "%cumulus release intr")


def test_an_expired_session_says_so_and_the_next_cell_gets_a_new_partition(notebook: Any) -> None:
    import sqlite3
    import time

    kc, gw = notebook
    run(kc, "%%cumulus --session exp --duration 1h\nkeep = 41")
    kernel_id = _kernel_of(kc, "exp")
    partition_id = gw.get(f"/api/kernels/{kernel_id}").json()["cumulus"]["partition_id"]
    with sqlite3.connect(gw.state) as db:
        db.execute(
            "UPDATE partitions SET expires_at = ? WHERE id = ?", (time.time() - 1, partition_id)
        )
    wait_until(lambda: gw.get(f"/api/kernels/{kernel_id}").status_code == 410, 60, "the 410")
    _, out, err, _ = run(kc, "%%cumulus --session exp\nprint(keep)")
    assert out == ""
    assert (
        f"PartitionExpired: Session exp: Partition {partition_id} (0.5 GPU on gpu0) expired" in err
    )
    assert "Run the cell with --renew for a new partition" in err
    _, out, err, outputs = run(kc, "%%cumulus --session exp --renew\nprint(keep + 1)")
    assert out == "42\n"  # keep came back from the old partition and was sent to the new one
    assert "Cumulus: sent again: keep" in status_text(outputs)
    run(kc, "%cumulus release exp")


def make_wheel(folder: Any, name: str = "cumulus_probe_pkg", version: str = "1.0") -> None:
    """A minimal, valid wheel built by hand (tests reach no package index)."""
    import base64
    import hashlib
    import zipfile

    files = {
        f"{name}/__init__.py": b"VALUE = 'from the overlay'\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
        for path, data in files.items()
    ]
    files[f"{name}-{version}.dist-info/RECORD"] = (
        "\n".join([*record, f"{name}-{version}.dist-info/RECORD,,"]) + "\n"
    ).encode()
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)


def test_pip_install_goes_into_an_overlay_never_the_gateway_environment(
    notebook: Any, tmp_path: Any
) -> None:
    from importlib.util import find_spec

    kc, _ = notebook
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels)
    run(kc, "%%cumulus --session deps\nstarted = True")
    _, out, err, _ = run(
        kc, f"%cumulus pip install --no-index --find-links {wheels} cumulus_probe_pkg"
    )
    assert "installed --no-index" in out and "overlays" in out, err
    _, out, err, _ = run(
        kc, "%%cumulus --session deps\nimport cumulus_probe_pkg\nprint(cumulus_probe_pkg.VALUE)"
    )
    assert out == "from the overlay\n", err
    assert (
        find_spec("cumulus_probe_pkg") is None
    )  # the gateway's (and this) environment is untouched
    _, out, _, _ = run(
        kc,
        f"%%cumulus --session deps --requirements '--no-index --find-links {wheels} cumulus_probe_pkg'\nprint('again')",
    )
    assert out.startswith("cached --no-index") and out.endswith(
        "again\n"
    )  # same requirements: instant
    run(kc, "%cumulus release deps")


def test_sync_uploads_a_directory_into_the_remote_working_directory(
    notebook: Any, tmp_path: Any
) -> None:
    kc, _ = notebook
    data = tmp_path / "project"
    (data / "configs").mkdir(parents=True)
    (data / "configs" / "run.json").write_text('{"lr": 0.1}')
    run(kc, "%%cumulus --session files\nstarted = True")
    _, out, err, _ = run(kc, f"%cumulus sync {data}")
    assert out.startswith("Cumulus: synced 1 file (0.0 MiB) to "), err
    _, out, _, _ = run(
        kc,
        "%%cumulus --session files\nimport json\nprint(json.load(open('configs/run.json'))['lr'])",
    )
    assert out == "0.1\n"
    run(kc, "%cumulus release files")


def test_large_results_stay_remote_as_refs_until_fetched(notebook: Any) -> None:
    kc, _ = notebook
    run(kc, "get_ipython().magics_manager.registry['CumulusMagics'].ref_threshold_mb = 1")
    reply, _, err, _ = run(
        kc, "%%cumulus --session refs\nimport numpy as np\nhuge = np.ones((1000, 1000))\nsmall = 3"
    )
    assert reply["status"] == "ok", err
    _, out, _, _ = run(kc, "print(repr(huge)); print(small)")
    assert out.splitlines() == [
        "RemoteRef(huge: ndarray float64 (1000, 1000), 7.6 MiB, in session refs; .fetch() brings it here)",
        "3",
    ]
    _, out, _, _ = run(
        kc, "%%cumulus --session refs\nprint(huge.sum())"
    )  # the ref is not sent back
    assert out == "1000000.0\n"
    _, out, _, _ = run(kc, "print(huge.fetch().shape)")
    assert out == "(1000, 1000)\n"
    _, out, _, _ = run(kc, "%%cumulus --session refs --pull huge\nhuge = huge * 2")
    _, out, _, _ = run(kc, "print(type(huge).__name__, huge[0, 0])")
    assert out == "ndarray 2.0\n"
    run(
        kc,
        "get_ipython().magics_manager.registry['CumulusMagics'].ref_threshold_mb = 64\n%cumulus release refs",
    )


def test_objects_from_a_local_module_the_remote_cannot_import_go_by_value(
    notebook: Any, tmp_path: Any
) -> None:
    kc, _ = notebook
    (tmp_path / "helpers_local_mod.py").write_text(
        "class Point:\n    def __init__(self, v):\n        self.v = v\n    def double(self):\n        return self.v * 2\n"
    )
    run(
        kc,
        f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\nfrom helpers_local_mod import Point\np = Point(21)",
    )
    reply, _, err, _ = run(kc, "%%cumulus --session local-mod\nanswer = p.double()\nq = Point(5)")
    assert reply["status"] == "ok", err
    _, out, _, _ = run(kc, "print(answer, q.double())")
    assert out == "42 10\n"
    run(kc, "%cumulus release local-mod")


def test_a_matplotlib_figure_appears_in_the_local_cell(notebook: Any) -> None:
    kc, _ = notebook
    reply, _, err, outputs = run(
        kc,
        "%%cumulus --session plots\nimport matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()",
    )
    assert reply["status"] == "ok", err
    images = [
        m["content"]["data"]["image/png"]
        for m in outputs
        if m["msg_type"] == "display_data" and "image/png" in m["content"]["data"]
    ]
    assert len(images) == 1
    import base64

    assert base64.b64decode(images[0])[:8] == b"\x89PNG\r\n\x1a\n"
    run(kc, "%cumulus release plots")


def test_a_kernel_that_died_between_cells_is_reported_and_replaced(notebook: Any) -> None:
    import os
    import signal

    kc, gw = notebook
    run(kc, "%config CumulusMagics.heartbeat_s = 0.5")
    run(kc, "base = 40")
    _, out, _, _ = run(
        kc, "%%cumulus --session died\nimport os\nremote_only = 1\nprint(os.getpid())"
    )
    kernel_id = _kernel_of(kc, "died")
    old_partition = gw.get(f"/api/kernels/{kernel_id}").json()["cumulus"]["partition_id"]
    os.kill(int(out), signal.SIGKILL)  # the remote kernel dies between cells
    line = _status_once_lost(kc, "died")
    assert "session died lost: the kernel died at" in line
    assert "its variables are gone" in line
    reply, out, _, outputs = run(kc, "%%cumulus --session died\nprint(base + 2)")
    assert reply["status"] == "ok"
    status = status_text(outputs)
    assert "session died lost: the kernel died at" in status, status
    assert "Starting a new session" in status
    assert out == "42\n"  # base was pushed again to the new kernel
    assert _kernel_of(kc, "died") != kernel_id
    partitions = [p["id"] for p in gw.get("/api/cumulus/partitions").json()]
    assert old_partition not in partitions  # the restarted old kernel was let go
    run(kc, "%cumulus release died")


def test_a_kernel_stopped_from_outside_is_known_lost_before_the_next_cell(notebook: Any) -> None:
    import time

    kc, gw = notebook
    run(kc, "%config CumulusMagics.heartbeat_s = 0.5")
    run(kc, "%%cumulus --session stopped\nx1 = 1")
    assert gw.delete(f"/api/kernels/{_kernel_of(kc, 'stopped')}").status_code == 204
    deadline = time.monotonic() + 60
    lost = "None"
    while lost == "None" and time.monotonic() < deadline:  # no cell, no status: the heartbeat
        lost = _session_attr(kc, "stopped", "lost")
    assert "session stopped lost: the kernel was stopped at" in lost
    line = _status_once_lost(kc, "stopped")
    assert "session stopped lost: the kernel was stopped at" in line
    reply, out, _, _ = run(kc, "%%cumulus --session stopped\nprint('fresh')")
    assert reply["status"] == "ok" and out == "fresh\n"
    run(kc, "%cumulus release stopped")


def test_a_queued_cell_shows_its_queue_position_then_its_partition(notebook: Any) -> None:
    from tests.support.messages import iopub_message

    kc, gw = notebook
    run(kc, "%cumulus release")  # the device to ourselves
    reply, _, err, _ = run(kc, "%%cumulus --gpu 1 --session whole\npass")
    assert reply["status"] == "ok", err
    holder = _kernel_of(kc, "whole")
    msg_id = kc.execute("%%cumulus --gpu 0.5 --session queued\nprint('ran')")
    seen: list[dict[str, Any]] = []

    def mine(message: dict[str, Any]) -> bool:
        if message["parent_header"].get("msg_id") == msg_id:
            seen.append(message)
        return False

    def queued() -> bool:
        with contextlib.suppress(Exception):  # no message yet: ask again
            iopub_message(kc, mine, timeout=0.5)
        return "queue position 1" in status_text(seen)

    wait_until(queued, 120, "the status display to show the queue position")
    assert re.search(
        r"Cumulus: waiting for a partition: queue position 1 \(no device has 0.5 free .*\), "
        r"waited \d+ s",
        status_text(seen),
    ), status_text(seen)
    assert gw.delete(f"/api/kernels/{holder}").status_code == 204  # the device frees up
    ran = iopub_message(
        kc,
        lambda m: (
            mine(m)
            or (
                m["parent_header"].get("msg_id") == msg_id
                and m["msg_type"] == "stream"
                and "ran" in m["content"]["text"]
            )
        ),
        timeout=120,
    )
    assert ran["content"]["text"] == "ran\n"
    assert shell_reply(kc, msg_id)["content"]["status"] == "ok"
    displays = [m for m in seen if m["msg_type"] in ("display_data", "update_display_data")]
    assert [m["msg_type"] for m in displays][:1] == ["display_data"]
    assert len(displays) >= 2 and {m["msg_type"] for m in displays[1:]} == {"update_display_data"}
    assert len({m["content"]["transient"]["display_id"] for m in displays}) == 1  # one, in place
    assert not [m for m in seen if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"]
    final = status_text(seen)
    assert "waiting" not in final and re.search(r"ready \(0.5 GPU.*after \d+\.\d s", final)
    run(kc, "%cumulus release")


def test_bad_duration_unreachable_gateway_and_wrong_token_are_one_line_each(notebook: Any) -> None:
    kc, _ = notebook
    run(kc, "untouched = 'before'")
    cases = [
        ("%%cumulus --duration 3s --session bad1\nuntouched = 'after'", "InvalidArgument: "),
        ("%%cumulus --gateway http://127.0.0.1:9 --session bad2\nuntouched = 'after'",
         "Unavailable: Cannot reach the Cumulus gateway at http://127.0.0.1:9"),
        ("import os\n_t = os.environ['CUMULUS_TOKEN']\nos.environ['CUMULUS_TOKEN'] = 'wrong'\n"
         "try:\n"
         "    get_ipython().run_cell_magic('cumulus', '--session bad3', \"untouched = 'after'\")\n"
         "finally:\n"
         "    os.environ['CUMULUS_TOKEN'] = _t",
         "Unauthenticated: The gateway at http://127.0.0.1:"),
    ]  # fmt: skip
    for code, expected in cases:
        reply, out, err, _ = run(kc, code)
        # the cell fails (papermill stops there) with the message alone, no traceback
        assert (reply["status"], reply["ename"]) == ("error", expected.split(":")[0]), err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(expected), err
    assert "duration" in run(kc, "%%cumulus --duration 3s --session bad1\npass")[2].lower()
    _, out, _, _ = run(kc, "print(untouched)")
    assert out == "before\n"
