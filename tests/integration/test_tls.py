"""Encrypted in transit: a real gateway serving HTTPS with a certificate of the test's own CA
(trustme), and every client of ours through it (REST, kernel WebSocket, the data path, ``run``,
the CLI, the magic, the proxy kernel), trusting that CA through ``CUMULUS_CA_BUNDLE``. Without
the CA each refuses in one sentence; plain HTTP goes on working. And the kernel link of a
container kernel: the launcher's connection file carries a CurveZMQ key pair, a real ipykernel
binds with it, and jupyter_client (the gateway's end) talks to it through a relay that records
what crosses: no plaintext does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.connect import write_connection_file
from jupyter_client.manager import start_new_kernel

from cumulus_jupyter import kernelspec, tls
from cumulus_jupyter.agent import launcher
from cumulus_jupyter.connection import GatewayClient, GatewaySettings
from cumulus_jupyter.errors import InvalidArgument, Unavailable
from cumulus_jupyter.protocol import callback
from cumulus_jupyter.session import RemoteSession
from gateway.runtimes.docker import DockerRuntime
from gateway.settings import Settings
from tests.support.gateway import Gateway
from tests.support.tls import HttpsGateway, Pki, make_pki

pytestmark = pytest.mark.integration
MIB = 2**20


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[HttpsGateway]:
    gw = HttpsGateway(tmp_path_factory.mktemp("https"), pki)
    try:
        yield gw
    finally:
        gw.stop()


def client_env(gw: HttpsGateway, trusted: bool = True) -> dict[str, str]:
    """The environment of a user's process pointed at ``gw``, with or without its CA."""
    variables = {k: v for k, v in os.environ.items() if k != "CUMULUS_CA_BUNDLE"}
    variables |= {"CUMULUS_GATEWAY_URL": gw.url, "CUMULUS_TOKEN": gw.token}
    if trusted:
        variables["CUMULUS_CA_BUNDLE"] = str(gw.pki.ca)
    return variables


def cumulus(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("cumulus")), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_rest_websocket_and_data_path_run_over_https(https: HttpsGateway) -> None:
    settings = GatewaySettings.resolve(https.url, https.token, ca_bundle=str(https.pki.ca))
    assert settings.ssl_context is not None
    session = RemoteSession("tls", settings)
    session.start("0.2", "10m", lambda line: None)
    try:
        big = np.random.default_rng(7).random(2 * MIB)  # 16 MiB: above the staging threshold
        session.push({"big": big, "small": [1, 2]})
        assert session.data_bytes >= big.nbytes, session.data_error  # data path, not messages
        reply = session.execute("doubled = big * 2", lambda message: None)
        assert reply["content"]["status"] == "ok"
        values, missing = session.pull(["doubled", "small"])
        assert missing == []
        np.testing.assert_array_equal(values["doubled"], big * 2)
        assert values["small"] == [1, 2]
        assert session.data_bytes >= 2 * big.nbytes
    finally:
        session.release()


RUN_SCRIPT = textwrap.dedent(
    """
    from cumulus_jupyter import run

    def triple(x):
        return 3 * x

    print("result", run(triple, 14, gpu=0.2, duration="2m"))
    """
)


def test_run_and_the_cli_trust_the_ca_bundle(https: HttpsGateway) -> None:
    done = subprocess.run(
        [sys.executable, "-c", RUN_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        env=client_env(https),
    )
    assert done.returncode == 0, done.stderr
    assert "result 42" in done.stdout
    listed = cumulus("list", env=client_env(https))
    assert listed.returncode == 0, listed.stderr


def test_the_magic_runs_a_cell_over_https(https: HttpsGateway) -> None:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in client_env(https).items():
            mp.setenv(name, value)
        km, kc = start_new_kernel(kernel_name="python3", startup_timeout=60)
    try:
        for code in ("%load_ext cumulus_jupyter", "x = 6"):
            assert kc.execute_interactive(code, timeout=60)["content"]["status"] == "ok"
        cell = "%%cumulus --gpu 0.2 --duration 5m\ny = x * 7"
        assert kc.execute_interactive(cell, timeout=180)["content"]["status"] == "ok"
        outputs: list[dict[str, Any]] = []
        kc.execute_interactive("print(y)", timeout=60, output_hook=outputs.append)
        printed = "".join(
            m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream"
        )
        assert printed.strip() == "42"
        kc.execute_interactive("%cumulus release", timeout=120)
        # the notebook loses its CA: a new session is refused in one line, the kernel lives on
        kc.execute_interactive("import os; del os.environ['CUMULUS_CA_BUNDLE']", timeout=60)
        outputs.clear()
        cell = "%%cumulus --gpu 0.2 --session untrusted\nz = 1"
        reply = kc.execute_interactive(cell, timeout=120, output_hook=outputs.append)
        assert (reply["content"]["status"], reply["content"]["ename"]) == ("error", "Unavailable")
        [error] = [m["content"]["traceback"] for m in outputs if m["msg_type"] == "error"]
        assert len(error) == 1 and error[0].startswith("Unavailable: "), error
        assert "does not trust" in error[0]
        kc.execute_interactive("print('lives on')", timeout=60, output_hook=outputs.append)
        assert any(m["content"].get("text") == "lives on\n" for m in outputs)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_the_proxy_kernel_takes_its_ca_from_the_kernelspec(
    https: HttpsGateway, tmp_path: Path
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in client_env(https).items():
            mp.setenv(name, value)
        mp.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
        name, where = kernelspec.install("0.2", "10m", prefix=str(tmp_path))
        spec = json.loads((Path(where) / "kernel.json").read_text())
        assert spec["env"]["CUMULUS_CA_BUNDLE"] == str(https.pki.ca.resolve())
        mp.delenv("CUMULUS_CA_BUNDLE")  # the front end has no CA of its own: the spec has it
        km, kc = start_new_kernel(kernel_name=name, startup_timeout=120)
    try:
        outputs: list[dict[str, Any]] = []
        reply = kc.execute_interactive("print(6 * 7)", timeout=120, output_hook=outputs.append)
        assert reply["content"]["status"] == "ok"
        printed = "".join(
            m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream"
        )
        assert printed.strip().endswith("42")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def test_without_the_ca_clients_refuse_in_one_sentence(
    https: HttpsGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUMULUS_CA_BUNDLE", raising=False)
    with pytest.raises(Unavailable, match="does not trust") as refused:
        asyncio.run(_check(GatewaySettings.resolve(https.url, https.token)))
    assert "CUMULUS_CA_BUNDLE" in str(refused.value)
    done = cumulus("list", env=client_env(https, trusted=False))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "does not trust" in done.stderr and "CUMULUS_CA_BUNDLE" in done.stderr
    with pytest.raises(InvalidArgument, match="does not exist"):
        tls.client_context("/nonexistent/ca.pem")


def test_a_launcher_trusts_exactly_the_certificate_the_gateway_handed_it(
    https: HttpsGateway,
) -> None:
    """What a container's launcher does with ``CUMULUS_CALLBACK_CERT``: its own gateway
    verifies; another certificate for the same address, even from the same CA, does not; the
    certificate file's private key never travels."""
    combined = https.pki.cert.read_text() + https.pki.key.read_text()  # a certfile may hold both
    handed = callback.leaf_certificate(combined)
    assert "PRIVATE KEY" not in handed
    health = https.url + "/api/cumulus/health"
    answer = httpx.get(health, headers=https.headers(), verify=tls.pinned_context(handed))
    assert answer.status_code == 200
    sibling = https.pki.authority.issue_cert("127.0.0.1").cert_chain_pems[0].bytes().decode()
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(health, verify=tls.pinned_context(callback.leaf_certificate(sibling)))


def test_behind_https_a_kernel_on_another_host_gets_its_variables_in_messages(pki: Pki) -> None:
    """The gateway-to-kernel data port is signed, not encrypted: an HTTPS gateway uses it only
    on loopback; a Swarm kernel on another node is sent its variables over CurveZMQ."""
    secure = DockerRuntime(settings=Settings(certfile=str(pki.cert)))
    elsewhere = {"connection_info": {"ip": "10.1.2.3"}, "data_port": 4000}
    here = {"connection_info": {"ip": "127.0.0.1"}, "data_port": 4000}
    assert secure.data_port(elsewhere) is None
    assert secure.data_port(here) == 4000
    assert DockerRuntime().data_port(elsewhere) == 4000  # plain HTTP: the client's hop is clear


def test_plain_http_still_works(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUMULUS_CA_BUNDLE", "/nonexistent/ca.pem")  # never read for http://
    plain = GatewaySettings.resolve(gateway.url, gateway.token)
    assert plain.ssl_context is None
    assert asyncio.run(_check(plain))["status"] == "ok"


async def _check(settings: GatewaySettings) -> dict[str, Any]:
    client = GatewayClient(settings)
    try:
        return await client.check()
    finally:
        await client.aclose()


class Recorder:
    """A loopback TCP relay to ``target`` that keeps every byte its clients send."""

    def __init__(self, target: int) -> None:
        self.target, self.sent = target, bytearray()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed
            while True:
                conn, _ = self.server.accept()
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target))
                except ConnectionRefusedError:  # the kernel is not listening yet: zmq retries
                    conn.close()
                    continue
                self.sockets += [conn, upstream]
                threading.Thread(target=self._pipe, args=(conn, upstream, True)).start()
                threading.Thread(target=self._pipe, args=(upstream, conn, False)).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        with contextlib.suppress(OSError):  # either end closed
            while data := src.recv(65536):
                if record:
                    self.sent += data
                dst.sendall(data)

    def close(self) -> None:
        self.server.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


PROBE = "probe = 'cumulus-plaintext-' + 'probe'; print(len(probe))"


def sniffed_execute(tmp: Path, curve: bool) -> tuple[str, bytes, str]:
    """Start a real ipykernel from a connection file (the launcher's own, or one without Curve
    keys), execute `PROBE` with a client that loaded the info as the gateway does (through the
    callback's payload and check), its shell channel through a `Recorder`; the reply's status,
    what the client sent, the kernel's log."""
    path = str(tmp / f"kernel-{curve}.json")
    if curve:
        info = launcher.write_connection(path, "127.0.0.1")
    else:
        info = dict(write_connection_file(path, ip="127.0.0.1", key=b"k" * 32)[1])
    reported = callback.checked(callback.payload(info, None))["connection_info"]
    log = tmp / f"kernel-{curve}.log"
    with log.open("wb") as out:
        kernel = subprocess.Popen(
            [sys.executable, "-m", "ipykernel_launcher", "-f", path], stdout=out, stderr=out
        )
    recorder = Recorder(int(reported["shell_port"]))
    kc = BlockingKernelClient()
    kc.load_connection_info(reported)
    kc.shell_port = recorder.port
    try:
        kc.start_channels(hb=False)  # a busy machine's slow start is not a dead kernel
        kc.wait_for_ready(timeout=60)
        status = kc.execute_interactive(PROBE, timeout=60)["content"]["status"]
    finally:
        kc.stop_channels()
        recorder.close()
        kernel.kill()
        kernel.wait(timeout=30)
    return status, bytes(recorder.sent), log.read_text(errors="replace")


def test_a_container_kernels_link_is_curve_encrypted(tmp_path: Path) -> None:
    info = launcher.write_connection(str(tmp_path / "keys.json"), "127.0.0.1")
    assert len(info["curve_publickey"]) == len(info["curve_secretkey"]) == 40  # Z85
    status, sent, log = sniffed_execute(tmp_path, curve=True)
    assert status == "ok"
    assert b"cumulus-plaintext-" not in sent and b"execute_request" not in sent
    assert "without encryption" not in log
    # the same probe with no Curve keys: the recorder sees it, so the check above means something
    status, sent, log = sniffed_execute(tmp_path, curve=False)
    assert status == "ok"
    assert b"cumulus-plaintext-" in sent and b"execute_request" in sent
    assert "without encryption" in log
