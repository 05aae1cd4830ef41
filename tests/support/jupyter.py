"""A stock Jupyter Server (or JupyterLab) on loopback for a test, stopped by PID afterwards."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.gateway import free_port
from tests.support.wait import wait_until


@contextmanager
def jupyter_server(
    module: str, root: Path, log: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[str, str]]:
    """``python -m MODULE`` (jupyter_server or jupyterlab) serving ``root``; yields (url, token)."""
    port, token = free_port(), "front-token-0123456789abcdef"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--allow-root", "--no-browser", "--ip=127.0.0.1",
             f"--port={port}", "--port-retries=0", f"--IdentityProvider.token={token}",
             f"--ServerApp.root_dir={root}", *args],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:

            def answers() -> bool:
                assert proc.poll() is None, log.read_text()
                try:
                    headers = {"Authorization": f"token {token}"}
                    return httpx.get(f"{url}/api/status", headers=headers).status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(answers, 90, f"{module} to answer")
            yield url, token
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
