"""Start a real ``cumulus-gateway`` on loopback for a test, and stop it and every kernel it
started (by PID) afterwards."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from chronos import Store, discover
from chronos.watchdog import live_process
from tests.support.processes import terminate
from tests.support.wait import wait_until

TOKEN = "test-token-" + "0" * 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PORT_TRIES = 5


class Gateway:
    def __init__(
        self,
        state: Path,
        log: Path,
        *args: str,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.state = state
        self.host = host
        self.port = free_port()
        self.url = f"http://{host}:{self.port}"
        self.token = TOKEN
        self.log_path = log
        self.args = list(args)
        self.runtime_dir = state.parent / "runtime"
        self.env = os.environ | (env or {})
        self.env |= {
            "CHRONOS_STATE": str(state),
            "JUPYTER_RUNTIME_DIR": str(self.runtime_dir),
            "CUMULUS_OVERLAYS": str(state.parent / "overlays"),  # remote pip installs stay here
        }
        self.proc: subprocess.Popen[bytes] | None = None
        state.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._first_start()
        except BaseException:
            self.stop()
            raise

    def _first_start(self) -> None:
        """Start on a free port; should another process take it between the pick and the
        gateway's bind (kernels pick ports too), on another, before anyone saw the URL."""
        for _ in range(PORT_TRIES - 1):
            try:
                self.start()
                return
            except RuntimeError as exc:
                if f"port {self.port} is not available" not in str(exc):
                    raise
            self.port = free_port()
            self.url = f"http://{self.host}:{self.port}"
        self.start()

    def start(self) -> None:
        command = [
            str(Path(sys.executable).with_name("cumulus-gateway")), "--allow-root",
            f"--ip={self.host}", f"--port={self.port}", "--port-retries=0",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.state.parent}",
            "--CumulusGateway.supervise_interval=0.2", *self.args,
        ]  # fmt: skip
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            command, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        try:
            wait_until(self._answers, 60, "the gateway to answer")
        except AssertionError:
            raise RuntimeError(f"gateway did not answer within 60 s:\n{self.log()}") from None

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            self._log.close()
            raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
        with contextlib.suppress(httpx.TransportError):  # not listening yet
            return self.get("/api/cumulus/health").status_code == 200
        return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.headers(), timeout=60, **kwargs)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, headers=self.headers(), json=json, timeout=120, **kwargs)

    def delete(self, path: str) -> httpx.Response:
        return httpx.delete(self.url + path, headers=self.headers(), timeout=60)

    def start_kernel(self, **env: str) -> dict[str, Any]:
        response = self.post("/api/kernels", {"name": "cumulus-gpu", "env": env})
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    def kill(self) -> None:
        """SIGKILL: the gateway dies with no chance to clean up, as in a crash."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)
        self._log.close()

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
        if not self._log.closed:
            self._log.close()
        self.kill_kernels()

    def kill_kernels(self) -> None:
        """Any kernel process recorded in the state file that still runs: stop it by PID."""
        if not self.state.exists():
            return
        with Store(discover({}), self.state) as store:
            for partition in store.with_processes():
                for ref in partition.processes:
                    proc = live_process(ref)
                    if proc is not None:
                        proc.kill()
                        proc.wait(timeout=30)


def set_expiry(gateway: Gateway, partition_id: str, seconds_from_now: float) -> None:
    """Let time pass: shift the partition's whole life back so that it ends at now + seconds."""
    with sqlite3.connect(gateway.state) as db:
        (expires,) = db.execute(
            "SELECT expires_at FROM partitions WHERE id = ?", (partition_id,)
        ).fetchone()
        shift = time.time() + seconds_from_now - expires
        db.execute(
            "UPDATE partitions SET expires_at = expires_at + ?, created_at = created_at + ? WHERE id = ?",
            (shift, shift, partition_id),
        )


@contextlib.contextmanager
def remote_session(gateway: Gateway, name: str, gpu: str = "0.2") -> Iterator[Any]:
    """A `RemoteSession` on ``gateway`` (a 10-minute partition of ``gpu``), released after."""
    from cumulus_jupyter.connection import GatewaySettings
    from cumulus_jupyter.session import RemoteSession

    session = RemoteSession(name, GatewaySettings(gateway.url, gateway.token))
    session.start(gpu, "10m", lambda line: None)
    try:
        yield session
    finally:
        session.release()
