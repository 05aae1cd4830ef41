"""Attacks from inside a real sandboxed kernel, through a real gateway: each one refused.

One gateway (local runtime, ``--LocalRuntime.sandbox=bwrap``, a memory limit) and two kernels
of two owners. Each attack runs as code in ``ana``'s kernel and prints what it got; the test
asserts that it got nothing. Skipped, loudly, only where bubblewrap cannot run here.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.sandbox import probe
from tests.integration.test_magic import make_wheel, notebook_kernel
from tests.integration.test_magic import run as run_cell
from tests.support.gateway import TOKEN, Gateway
from tests.support.kernel_ws import KernelSocket, printed_json
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

WHY_NOT = probe()
if WHY_NOT is not None and os.environ.get("CI"):  # CI installs bubblewrap: it must run there
    pytest.fail(f"bubblewrap cannot run in CI: {WHY_NOT}", pytrace=False)
if WHY_NOT is not None:
    pytest.skip(
        f"SANDBOX TESTS SKIPPED: bubblewrap cannot run here: {WHY_NOT}", allow_module_level=True
    )

MEMORY = "400M"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("sandbox")
    token_file = tmp / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    wheels = tmp / "wheels"  # a local index the kernels are given (read-only) for overlays
    wheels.mkdir(mode=0o755)
    make_wheel(wheels)
    for path in (wheels, *wheels.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    gw = Gateway(
        tmp / "state" / "chronos.sqlite3", tmp / "gateway.log",
        "--LocalRuntime.sandbox=bwrap", f"--LocalRuntime.memory={MEMORY}",
        "--LocalRuntime.cpus=1", "--CumulusKernelManager.launch_timeout=300",
        f"--LocalRuntime.read_only_paths={[str(wheels)]}",
        env={"CUMULUS_TEST_SECRET_FILE": str(token_file), "CUMULUS_TEST_WHEELS": str(wheels)},
    )  # fmt: skip
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def kernels(gateway: Gateway) -> Iterator[dict[str, dict[str, Any]]]:
    models = {
        owner: gateway.start_kernel(KERNEL_USERNAME=owner, KERNEL_GPU="0.2")
        for owner in ("ana", "bob")
    }
    try:
        yield models
    finally:
        for model in models.values():
            gateway.delete(f"/api/kernels/{model['id']}")


def run(gateway: Gateway, kernel_id: str, code: str, timeout: float = 120) -> Any:
    """What ``code`` (which prints one JSON value last) printed, run in the kernel."""
    return printed_json(gateway.url, gateway.token, kernel_id, code, timeout)


ATTEMPT = """
import json, os
def attempt(what):
    try:
        got = what()
    except Exception as exc:
        return "refused: " + type(exc).__name__
    return "GOT: " + repr(got)[:200]
"""


def refused(results: dict[str, str]) -> None:
    taken = {k: v for k, v in results.items() if not v.startswith("refused")}
    assert not taken, f"attacks that succeeded: {taken}"


def test_kernel_is_not_the_gateway(gateway: Gateway, kernels: dict[str, dict[str, Any]]) -> None:
    facts = run(gateway, kernels["ana"]["id"], "import os, sys, json\n"
        "status = open('/proc/self/status').read()\n"
        "print(json.dumps([os.getuid(), sys.executable, sys.prefix, os.getcwd(),"
        " 'NoNewPrivs:\\t1' in status, 'CapEff:\\t0000000000000000' in status]))")  # fmt: skip
    other = run(gateway, kernels["bob"]["id"], "import os, json; print(json.dumps(os.getuid()))")
    uid, executable, prefix, cwd, no_new_privs, no_caps = facts
    assert uid != os.getuid() and uid != 0 and other != uid
    assert not executable.startswith(str(Path(os.sys.prefix)))  # not the gateway's interpreter
    assert prefix != os.sys.prefix and no_new_privs and no_caps
    assert kernels["ana"]["id"] in cwd


def test_the_gateways_secrets_are_out_of_reach(
    gateway: Gateway, kernels: dict[str, dict[str, Any]]
) -> None:
    assert gateway.proc is not None
    targets = {
        "state": str(gateway.state),
        "token_file": gateway.env["CUMULUS_TEST_SECRET_FILE"],
        "runtime_dir": str(gateway.runtime_dir),
        "gateway_environ": f"/proc/{gateway.proc.pid}/environ",
        "gateway_cmdline": f"/proc/{gateway.proc.pid}/cmdline",
    }
    code = (
        ATTEMPT
        + f"t = {targets!r}\nTOKEN = {TOKEN!r}\n"
        + """
def scan_proc():
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for name in ("cmdline", "environ"):
            try:
                if TOKEN.encode() in open(f"/proc/{pid}/{name}", "rb").read():
                    found.append(pid)
            except OSError:  # unreadable from here: refused, as it should be
                continue
    if found:
        return found
    raise LookupError("no process shows the token")
def in_env():
    hits = [k for k, v in os.environ.items() if TOKEN in v]
    if hits:
        return hits
    raise LookupError("not in the environment")
print(json.dumps({
    "read state": attempt(lambda: open(t["state"], "rb").read(16)),
    "read token file": attempt(lambda: open(t["token_file"]).read()),
    "list runtime dir": attempt(lambda: os.listdir(t["runtime_dir"])),
    "gateway environ": attempt(lambda: open(t["gateway_environ"], "rb").read()),
    "gateway cmdline": attempt(lambda: open(t["gateway_cmdline"], "rb").read()),
    "token in /proc": attempt(scan_proc),
    "token in env": attempt(in_env),
}))
"""
    )
    results = run(gateway, kernels["ana"]["id"], code)
    assert len(results) == 7
    refused(results)


def test_other_kernels_and_users_are_out_of_reach(
    gateway: Gateway, kernels: dict[str, dict[str, Any]]
) -> None:
    bob = kernels["bob"]["id"]
    bob_dir = run(gateway, bob, "import os, json\n"
        "open('secret.txt', 'w').write('bob only')\nprint(json.dumps(os.getcwd()))")  # fmt: skip
    sockets = gateway.get("/api/cumulus/health").json()  # the gateway still answers
    assert sockets["runtime"] == "local"
    targets = {
        "conn": str(gateway.runtime_dir / f"kernel-{bob}.json"),
        "conn_copy": f"{bob_dir}/kernel.json",
        "workdir": f"{bob_dir}/secret.txt",
        "listdir": bob_dir,
        "sockets": os.path.dirname(os.environ.get("TMPDIR", "/tmp")) or "/tmp",
    }
    code = (
        ATTEMPT
        + f"t = {targets!r}\n"
        + """
import glob
def other_sockets():
    mine = os.environ.get("CUMULUS_DATA_SOCKET", "")
    found = [p for p in glob.glob("/tmp/**/*.sock", recursive=True) if p != mine]
    own = mine.removesuffix(".sock") + "-"  # its own ZMQ sockets lie beside it
    found += [p for p in glob.glob(os.path.dirname(mine) + "/*")
              if p != mine and not p.startswith(own)] if mine else []
    if found:
        return found
    raise LookupError("no other kernel's socket")
print(json.dumps({
    "read bob's connection file": attempt(lambda: open(t["conn"]).read()),
    "read bob's copy of it": attempt(lambda: open(t["conn_copy"]).read()),
    "read bob's work file": attempt(lambda: open(t["workdir"]).read()),
    "list bob's directory": attempt(lambda: os.listdir(t["listdir"])),
    "see other data sockets": attempt(other_sockets),
}))
"""
    )
    results = run(gateway, kernels["ana"]["id"], code)
    assert len(results) == 5
    refused(results)


SNIFF = """
import json, time, zmq
def listening():  # every TCP port listening on this host's loopback or on any address
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port = local.rsplit(":", 1)
            if state == "0A" and address.strip("0") in ("", "100007F", "1"):
                ports.add(int(port, 16))
    return sorted(ports)
context = zmq.Context.instance()
subscribers = []
for port in listening():
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(f"tcp://127.0.0.1:{port}")
    subscribers.append(sub)
time.sleep(1)  # let the subscriptions reach whatever publishes
print("listening on", len(subscribers), "ports", flush=True)
heard, deadline = [], time.monotonic() + 60
poller = zmq.Poller()
for sub in subscribers:
    poller.register(sub, zmq.POLLIN)
while time.monotonic() < deadline and not any(b"ana-secret" in part for part in heard):
    for sub, _ in poller.poll(200):
        heard += sub.recv_multipart()
    if any(b"done-sniffing" in part for part in heard):
        break
print(json.dumps(any(b"ana-secret" in part for part in heard)))
"""


def test_another_users_kernel_cannot_subscribe_to_a_kernels_output(
    gateway: Gateway, kernels: dict[str, dict[str, Any]]
) -> None:
    """IOPub is publish/subscribe: HMAC signs its messages but anyone who can connect reads
    them. A sandboxed kernel's ZMQ sockets are Unix sockets in its own directory, so bob's
    kernel, subscribed to every port listening on the host, hears nothing of ana's cell."""

    async def go() -> Any:
        bob = await KernelSocket.open(gateway.url, gateway.token, kernels["bob"]["id"], "v1")
        try:
            sniffing = await bob.start_execute(SNIFF)
            await bob.wait_for(
                lambda m: m["msg_type"] == "stream" and "listening on" in m["content"]["text"],
                timeout=120,
            )
            await asyncio.to_thread(
                run, gateway, kernels["ana"]["id"], "import json; print(json.dumps('ana-secret'))"
            )
            # the marker goes out after ana's output: once bob has it (or not), he stops
            await asyncio.to_thread(
                run,
                gateway,
                kernels["ana"]["id"],
                "import json; print(json.dumps('done-sniffing'))",
            )
            reply = await bob.finish(sniffing, timeout=120)
        finally:
            await bob.close()
        return reply

    reply = asyncio.run(go())
    assert reply.stdout.strip().splitlines()[-1] == "false", reply.stdout


def test_the_gateways_python_and_process_are_untouchable(
    gateway: Gateway, kernels: dict[str, dict[str, Any]]
) -> None:
    assert gateway.proc is not None
    site = next(Path(os.sys.prefix, "lib").glob("python3*/site-packages"))
    targets = {"site": str(site), "prefix": os.sys.prefix, "pid": gateway.proc.pid}
    code = (
        ATTEMPT
        + f"t = {targets!r}\n"
        + """
import signal, sys, sysconfig
def write(path):
    with open(path, "w") as f:
        f.write("import os; os.system('id')")
print(json.dumps({
    "write gateway site-packages": attempt(lambda: write(t["site"] + "/evil.pth")),
    "write gateway bin": attempt(lambda: write(t["prefix"] + "/bin/evil")),
    "write kernel env": attempt(lambda: write(sysconfig.get_paths()["purelib"] + "/evil.pth")),
    "write base python": attempt(lambda: write(sys.base_prefix + "/lib/evil.py")),
    "SIGTERM the gateway": attempt(lambda: os.kill(t["pid"], signal.SIGTERM)),
    "SIGKILL the gateway's group": attempt(lambda: os.killpg(t["pid"], signal.SIGKILL)),
}))
"""
    )
    results = run(gateway, kernels["ana"]["id"], code)
    assert len(results) == 6
    refused(results)
    assert not (site / "evil.pth").exists()
    assert gateway.proc.poll() is None
    assert gateway.get("/api/cumulus/health").status_code == 200


def test_past_its_memory_limit_a_kernel_dies_alone(
    gateway: Gateway, kernels: dict[str, dict[str, Any]]
) -> None:
    hog = gateway.start_kernel(KERNEL_USERNAME="carol", KERNEL_GPU="0.2")["id"]

    async def allocate() -> None:
        ws = await KernelSocket.open(gateway.url, gateway.token, hog, "v1")
        try:
            await ws.start_execute("blocks = []\nwhile True: blocks.append(b'x' * 2**26)")
        finally:
            await ws.close()

    asyncio.run(allocate())

    def ended() -> str | None:
        response = gateway.get(f"/api/kernels/{hog}")
        return response.text if response.status_code == 410 else None

    reason = wait_until(ended, 120, "the memory hog to be reported ended")
    assert "out of memory" in reason and MEMORY in reason
    assert gateway.get("/api/cumulus/health").status_code == 200
    assert run(gateway, kernels["ana"]["id"], "print(1 + 1)") == 2


def test_a_cumulus_cell_runs_sandboxed_with_an_overlay_and_synced_files(
    gateway: Gateway, tmp_path: Path
) -> None:
    wheels = gateway.env["CUMULUS_TEST_WHEELS"]
    project = tmp_path / "project"
    project.mkdir()
    (project / "run.json").write_text('{"lr": 0.1}')
    with notebook_kernel(gateway) as kc:
        overlay = f"--requirements '--no-index --find-links {wheels} cumulus_probe_pkg'"
        reply, out, err, _ = run_cell(kc, f"%%cumulus --session box --gpu 0.2 {overlay}\npass")
        assert reply["status"] == "ok" and "installed --no-index" in out, err
        _, out, err, _ = run_cell(kc, f"%cumulus sync {project}")
        assert out.startswith("Cumulus: synced 1 file"), err
        reply, _, err, _ = run_cell(kc, "%%cumulus --session box\nimport json, os\n"
            "value = __import__('cumulus_probe_pkg').VALUE\nuid = os.getuid()\n"
            "lr = json.load(open('run.json'))['lr']")  # fmt: skip
        assert reply["status"] == "ok", err
        reply, out, err, _ = run_cell(
            kc, "import os\nprint(value, uid != 0, uid != os.getuid(), lr)"
        )
        assert out == "from the overlay True True 0.1\n", (reply, err)
        reply, _, err, outputs = run_cell(  # a first plot: no fontconfig complaint in red
            kc,
            "%%cumulus --session box\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()",
        )
        assert (reply["status"], err) == ("ok", ""), err
        assert any("image/png" in m["content"].get("data", {}) for m in outputs), outputs
        run_cell(kc, "%cumulus release box")


def test_unauthenticated_requests_still_refused(gateway: Gateway) -> None:
    assert httpx.get(gateway.url + "/api/kernels", timeout=30).status_code in (401, 403)
