"""Execute round trips and cold starts: direct jupyter_client vs our gateway vs Enterprise Gateway.

All measured side by side in one run on this machine, and printed as ratios:

- direct: jupyter_client to a local ipykernel over ZMQ (the floor);
- gateway: `cumulus-gateway`'s kernel WebSocket, TCP_NODELAY on (as shipped) and off;
- the same over HTTPS/WSS (a certificate from a CA the run makes with trustme): the gateway's
  WebSocket, the proxy kernel and the ``%%cumulus`` cells, each as a row of its own;
- the Cumulus GPU kernel (the local proxy) driven by jupyter_client, and a ``%%cumulus`` cell
  running ``pass`` on a warm session in an in-process IPython shell;
- Enterprise Gateway 3.3, when ``--eg-bin`` names the bin directory of a virtualenv that has
  ``jupyter_enterprise_gateway`` (``make bench`` builds one; its pins clash with ours).

    python benchmarks/relay_latency.py [--n 200] [--eg-bin .bench/eg/bin] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar

import httpx
import websockets
from jupyter_client.manager import AsyncKernelManager

TOKEN = "bench-" + uuid.uuid4().hex
# EG refuses to start kernels for root unless a user is named
EG_KERNEL = {"name": "python3", "env": {"KERNEL_USERNAME": "bench"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def execute_request(session: str) -> tuple[str, dict[str, Any]]:
    msg_id = uuid.uuid4().hex
    return msg_id, {
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "bench",
                   "session": session, "date": "2026-01-01T00:00:00Z", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": "pass", "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }  # fmt: skip


async def through_jupyter_client(kernel_name: str, n: int) -> tuple[list[float], float]:
    """Start ``kernel_name`` with jupyter_client and time ``pass`` round trips (the first one,
    from the start, is the cold start)."""
    started = time.perf_counter()
    km = AsyncKernelManager(kernel_name=kernel_name)
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    samples = []
    try:
        for i in range(n + 10):
            t0 = time.perf_counter()
            msg_id = kc.execute("pass")
            while (await kc.get_shell_msg(timeout=60))["parent_header"].get("msg_id") != msg_id:
                continue  # replies to other requests
            if i == 0:
                cold = time.perf_counter() - started
            if i >= 10:
                samples.append(time.perf_counter() - t0)
    finally:
        kc.stop_channels()
        await km.shutdown_kernel()
    return samples, cold


async def through_proxy(gateway: Server, tmp: Path, n: int) -> tuple[list[float], float]:
    """The Cumulus GPU kernel (local proxy) in front of the gateway, driven by jupyter_client."""
    from cumulus_jupyter import kernelspec

    os.environ.pop("CUMULUS_CA_BUNDLE", None)
    os.environ |= {"JUPYTER_PATH": str(tmp / "share" / "jupyter")} | gateway.client_env
    name, _ = kernelspec.install("0.5", "1h", name="cumulus-bench", prefix=str(tmp))
    return await through_jupyter_client(name, n)


def channels(base: str, kernel_id: str, session: str, context: ssl.SSLContext | None = None) -> Any:
    """The kernel's WebSocket (``ws://`` or, with ``context``, ``wss://``), to open with
    ``async with``."""
    url = base.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels?session_id={session}"
    return websockets.connect(
        url, additional_headers={"Authorization": f"token {TOKEN}"}, ssl=context
    )


async def round_trip(ws: Any, session: str) -> float:
    """Seconds for one ``pass`` execute request to be answered on ``ws``."""
    msg_id, msg = execute_request(session)
    t0 = time.perf_counter()
    await ws.send(json.dumps(msg))
    while True:
        reply = json.loads(await ws.recv())
        if reply["channel"] == "shell" and reply["parent_header"].get("msg_id") == msg_id:
            return time.perf_counter() - t0


async def over_websocket(
    base: str, kernel_id: str, n: int, context: ssl.SSLContext | None = None
) -> list[float]:
    session = uuid.uuid4().hex
    async with channels(base, kernel_id, session, context) as ws:
        samples = [await round_trip(ws, session) for _ in range(n + 10)]
    return samples[10:]


async def taken_in_turns(servers: list[Server], n: int) -> list[list[float]]:
    """Round trips to a kernel on each server in turn (one each, ``n`` times over), so that on a
    shared machine all of them see the same load: HTTP against HTTPS, side by side in time."""
    async with contextlib.AsyncExitStack() as stack:
        links = []
        for server in servers:
            kernel_id, session = server.start_kernel({"name": "cumulus-gpu"}), uuid.uuid4().hex
            ws = await stack.enter_async_context(
                channels(server.url, kernel_id, session, server.context)
            )
            links.append((ws, session))
        samples: list[list[float]] = [[] for _ in servers]
        for i in range(n + 10):
            for (ws, session), taken in zip(links, samples, strict=True):
                seconds = await round_trip(ws, session)
                if i >= 10:
                    taken.append(seconds)
    return samples


def through_magic(gateway: Server, n: int) -> tuple[list[float], float]:
    """``%%cumulus`` cells running ``pass`` in an in-process IPython shell (a notebook's
    kernel without the notebook): the first cell starts the session (the cold start), the
    others reuse it, warm."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    os.environ.pop("CUMULUS_CA_BUNDLE", None)
    os.environ |= gateway.client_env
    shell = InteractiveShell.instance()
    shell.run_cell("%load_ext cumulus_jupyter")
    cell = "%%cumulus --gpu 0.5 --session bench\npass\n"
    samples = []
    with capture_output():  # the session's progress lines
        started = time.perf_counter()
        shell.run_cell(cell).raise_error()
        cold = time.perf_counter() - started
        for i in range(n + 10):
            t0 = time.perf_counter()
            shell.run_cell(cell).raise_error()
            if i >= 10:
                samples.append(time.perf_counter() - t0)
        shell.run_cell("%cumulus release bench")
    return samples, cold


def through_magic_push(gateway: Server, n: int, kib: int = 100) -> tuple[list[float], float]:
    """``%%cumulus`` cells that read a fresh ``kib`` KiB value (set before each, untimed: it
    differs every time, so every cell pushes it) and bind a small result (which comes back)."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    os.environ.pop("CUMULUS_CA_BUNDLE", None)
    os.environ |= gateway.client_env
    shell = InteractiveShell.instance()
    shell.run_cell("%load_ext cumulus_jupyter")
    cell = "%%cumulus --gpu 0.5 --session bench-push\nsize = len(blob)\n"
    samples = []
    with capture_output():
        shell.user_ns["blob"] = os.urandom(kib * 1024)
        started = time.perf_counter()
        shell.run_cell(cell).raise_error()
        cold = time.perf_counter() - started
        for i in range(n + 10):
            shell.user_ns["blob"] = os.urandom(kib * 1024)
            t0 = time.perf_counter()
            shell.run_cell(cell).raise_error()
            if i >= 10:
                samples.append(time.perf_counter() - t0)
        assert shell.user_ns["size"] == kib * 1024
        shell.run_cell("%cumulus release bench-push")
    return samples, cold


class Certificate:
    """A CA of the run's own (trustme) and a certificate it signed for 127.0.0.1, in files."""

    def __init__(self, where: Path) -> None:
        import trustme  # the test extra's; only the HTTPS rows need it

        authority = trustme.CA(organization_name="Cumulus bench CA")
        issued = authority.issue_cert("127.0.0.1")
        self.ca, self.cert, self.key = where / "ca.pem", where / "cert.pem", where / "key.pem"
        authority.cert_pem.write_to_path(str(self.ca))
        issued.cert_chain_pems[0].write_to_path(str(self.cert))
        issued.private_key_pem.write_to_path(str(self.key))
        self.context = ssl.create_default_context(cafile=str(self.ca))

    @property
    def args(self) -> list[str]:
        return [f"--certfile={self.cert}", f"--keyfile={self.key}"]


class Server:
    """A gateway process on loopback (HTTPS with ``tls``), stopped (with its kernels) when
    done."""

    def __init__(
        self, command: list[str], env: dict[str, str], tls: Certificate | None = None
    ) -> None:
        self.port = free_port()
        self.tls = tls
        self.context = tls.context if tls else None
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        command = [*command, *(tls.args if tls else [])]
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
            prefix="bench-gw-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            [*command, f"--port={self.port}"], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{command[0]} exited: {Path(self.log.name).read_text()[-2000:]}"
                )
            try:
                answer = httpx.get(
                    f"{self.url}/api/kernelspecs", headers=self.headers, verify=self.verify
                )
                if answer.status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"{command[0]} did not start")

    headers: ClassVar[dict[str, str]] = {"Authorization": f"token {TOKEN}"}

    @property
    def verify(self) -> ssl.SSLContext | bool:
        return self.context or True

    @property
    def client_env(self) -> dict[str, str]:
        """What a client of ours needs in its environment to reach this server."""
        found = {"CUMULUS_GATEWAY_URL": self.url, "CUMULUS_TOKEN": TOKEN}
        return found | ({"CUMULUS_CA_BUNDLE": str(self.tls.ca)} if self.tls else {})

    def start_kernel(self, body: dict[str, Any]) -> str:
        r = httpx.post(
            f"{self.url}/api/kernels", headers=self.headers, json=body, timeout=120,
            verify=self.verify,
        )  # fmt: skip
        r.raise_for_status()
        return str(r.json()["id"])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


def measure_gateway(server: Server, body: dict[str, Any], n: int) -> tuple[list[float], float]:
    started = time.perf_counter()
    kernel_id = server.start_kernel(body)
    first = asyncio.run(over_websocket(server.url, kernel_id, 1, server.context))
    cold = time.perf_counter() - started
    del first
    return asyncio.run(over_websocket(server.url, kernel_id, n, server.context)), cold


def ours(
    state: Path, nodelay: bool = True, devices: str | None = None, tls: Certificate | None = None
) -> Server:
    """Our gateway on its defaults, its state in ``state`` (and ``CHRONOS_DEVICES=devices``;
    HTTPS with ``tls``)."""
    exe = str(Path(sys.executable).with_name("cumulus-gateway"))
    env = {"CHRONOS_STATE": str(state)} | ({"CHRONOS_DEVICES": devices} if devices else {})
    return Server(
        [exe, "--allow-root", "--ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}",
         f"--CumulusGateway.tcp_nodelay={nodelay}"],
        os.environ | env, tls,
    )  # fmt: skip


def in_containers(tmp: Path, n: int) -> tuple[list[float], float]:
    """Our gateway on the docker runtime: the cold start includes the container's start and the
    kernel's callback."""
    from gateway.container.build import build

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' dockerd helper
    from tests.support.engine import Engine

    engine = Engine()
    engine.start()
    try:
        build(docker_url=engine.url)
        exe = str(Path(sys.executable).with_name("cumulus-gateway"))
        server = Server(
            [exe, "--allow-root", "--ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}",
             "--runtime=docker"],
            os.environ | {"CHRONOS_STATE": str(tmp / "docker.sqlite3"), "DOCKER_HOST": engine.url},
        )  # fmt: skip
        try:
            return measure_gateway(server, {"name": "cumulus-gpu"}, n)
        finally:
            server.stop()
    finally:
        engine.stop()


def enterprise_gateway(bin_dir: Path) -> Server:
    return Server(
        [str(bin_dir / "jupyter-enterprisegateway"), "--ip=127.0.0.1",
         f"--EnterpriseGatewayApp.auth_token={TOKEN}"],
        os.environ | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "EG_KERNEL_LAUNCH_TIMEOUT": "60"},
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--eg-bin", type=Path, help="bin dir of a venv with Enterprise Gateway")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--docker", action="store_true",
        help="also measure the docker runtime (starts a dockerd of its own and builds the job "
        "image, as the docker test tier does; needs root)",
    )  # fmt: skip
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}

    def record(name: str, samples: list[float], cold: float) -> None:
        results[name] = {
            "median_ms": statistics.median(samples) * 1000,
            "p90_ms": sorted(samples)[int(len(samples) * 0.9)] * 1000,
            "cold_start_s": cold,
        }

    record("direct jupyter_client", *asyncio.run(through_jupyter_client("python3", args.n)))
    with tempfile.TemporaryDirectory() as tmp:
        certificate = Certificate(Path(tmp))
        for nodelay, tls, suffix in (
            (True, None, ""),
            (False, None, ", no TCP_NODELAY"),
            (True, certificate, ", HTTPS"),
        ):
            server = ours(Path(tmp) / f"state-{nodelay}{suffix}.sqlite3", nodelay, tls=tls)
            try:
                gateway = measure_gateway(server, {"name": "cumulus-gpu"}, args.n)
                record("cumulus gateway" + suffix, *gateway)
                if nodelay:
                    proxy = asyncio.run(through_proxy(server, Path(tmp), args.n))
                    record("Cumulus GPU kernel (proxy)" + suffix, *proxy)
                    magic = through_magic(server, args.n)
                    record("%%cumulus cell (warm session)" + suffix, *magic)
                    push = through_magic_push(server, args.n)
                    record("%%cumulus cell pushing 100 KiB" + suffix, *push)
            finally:
                server.stop()
        plain = ours(Path(tmp) / "turns-http.sqlite3")
        secure = ours(Path(tmp) / "turns-https.sqlite3", tls=certificate)
        try:
            ws, wss = asyncio.run(taken_in_turns([plain, secure], args.n))
        finally:
            plain.stop()
            secure.stop()
        record("cumulus gateway, WS in turns with WSS", ws, 0.0)
        record("cumulus gateway, WSS in turns with WS", wss, 0.0)
    if args.docker:
        with tempfile.TemporaryDirectory() as tmp:
            record("cumulus gateway, docker runtime", *in_containers(Path(tmp), args.n))
    if args.eg_bin:
        server = enterprise_gateway(args.eg_bin)
        try:
            record("Enterprise Gateway 3.3", *measure_gateway(server, EG_KERNEL, args.n))
        finally:
            server.stop()

    floor = results["direct jupyter_client"]["median_ms"]
    width = max(map(len, results))
    columns = ("median", "p90", "vs direct", "cold start")
    print(f"{'execute round trip':<{width}}  " + "  ".join(f"{c:>10}" for c in columns))
    for name, r in results.items():
        print(
            f"{name:<{width}}  {r['median_ms']:>8.2f}ms  {r['p90_ms']:>8.2f}ms  "
            f"{r['median_ms'] / floor:>9.2f}x  {r['cold_start_s']:>9.2f}s"
        )
    ours_ms = results["cumulus gateway"]["median_ms"]
    print(f"cumulus gateway / direct: {ours_ms / floor:.2f}x (target <= 1.25x)")
    proxy_ms = results["Cumulus GPU kernel (proxy)"]["median_ms"]
    print(f"Cumulus GPU kernel / direct: {proxy_ms / floor:.2f}x (target <= 1.5x)")
    magic_ms = results["%%cumulus cell (warm session)"]["median_ms"]
    print(f"%%cumulus cell / direct: {magic_ms / floor:.2f}x (target <= 1.25x)")
    push_ms = results["%%cumulus cell pushing 100 KiB"]["median_ms"]
    print(f"%%cumulus cell pushing 100 KiB / direct: {push_ms / floor:.2f}x (target <= 1.4x)")
    for row in (
        "cumulus gateway", "Cumulus GPU kernel (proxy)", "%%cumulus cell (warm session)",
        "%%cumulus cell pushing 100 KiB",
    ):  # fmt: skip
        encrypted = results[row + ", HTTPS"]["median_ms"]
        print(f"{row}, HTTPS / HTTP: {encrypted / results[row]['median_ms']:.2f}x")
    ws_ms = results["cumulus gateway, WS in turns with WSS"]["median_ms"]
    wss_ms = results["cumulus gateway, WSS in turns with WS"]["median_ms"]
    print(f"cumulus gateway, WSS / WS taken in turns: {wss_ms / ws_ms:.2f}x")
    if "Enterprise Gateway 3.3" in results:
        eg = results["Enterprise Gateway 3.3"]["median_ms"]
        print(f"Enterprise Gateway / cumulus gateway: {eg / ours_ms:.1f}x (target >= 5x)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
