"""A real JupyterHub for the hub tier, started once and stopped (every process by PID) after it.

The hub (dummy authenticator, ``SimpleLocalProcessSpawner``, its own configurable-http-proxy,
all on loopback) lists the gateway as its service ``cumulus`` and gives its users, and their
servers' ``JUPYTERHUB_API_TOKEN``, access to it; the spawner's environment names the gateway
(``CUMULUS_GATEWAY_URL``) and the kernelspecs the servers see. Where configurable-http-proxy or
jupyterhub is missing (``make system-deps`` installs the proxy as root), the tier is skipped
with the reason; under CI that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from cumulus_jupyter import kernelspec
from tests.support.gateway import Gateway, free_port
from tests.support.processes import terminate
from tests.support.wait import wait_until

BIN = Path(sys.executable).parent
USERS = ("alice", "bob")
GPU_KERNEL = "cumulus-gpu-0.1-10m"
SERVICE = "cumulus"
ADMIN_SERVICE = "cumulus-tests"
MAX_KERNELS = 3  # per hub user: each holds 2 (a GPU kernel and a %%cumulus cell's), 4 in all


def why_unavailable() -> str | None:
    if shutil.which("configurable-http-proxy") is None:
        return (
            "configurable-http-proxy not found (npm install -g configurable-http-proxy, which "
            "`make system-deps` does as root): JupyterHub tier NOT run"
        )
    if not (BIN / "jupyterhub").exists() or not (BIN / "jupyterhub-singleuser").exists():
        return "jupyterhub not installed in the venv (pip install -e '.[test]'): hub tier NOT run"
    return None


def config(root: Path, hub: Hub, gateway_url: str) -> str:
    """jupyterhub_config.py: what an operator writes (README, "Behind JupyterHub"), on loopback."""
    access = f"access:services!service={SERVICE}"
    settings: dict[str, Any] = {
        "JupyterHub.ip": "127.0.0.1",
        "JupyterHub.port": hub.port,
        "JupyterHub.hub_ip": "127.0.0.1",
        "JupyterHub.hub_port": hub.hub_port,
        "JupyterHub.db_url": f"sqlite:///{root / 'jupyterhub.sqlite'}",
        "JupyterHub.cookie_secret_file": str(root / "cookie_secret"),
        "JupyterHub.pid_file": str(root / "jupyterhub.pid"),
        "JupyterHub.authenticator_class": "dummy",
        "JupyterHub.spawner_class": "simple",
        "JupyterHub.cleanup_servers": True,
        "JupyterHub.services": [
            {"name": SERVICE, "url": gateway_url, "display": False},
            {"name": ADMIN_SERVICE, "api_token": hub.admin_token},
        ],
        "JupyterHub.load_roles": [
            {"name": "user", "scopes": ["self", access]},
            {
                "name": "cumulus-tests",
                "scopes": ["admin:users", "admin:servers", "admin:server_state", "tokens"],
                "services": [ADMIN_SERVICE],
            },
        ],
        "Authenticator.allowed_users": list(USERS),
        "Spawner.server_token_scopes": ["users:activity!user", "access:servers!server", access],
        "Spawner.cmd": [str(BIN / "jupyterhub-singleuser")],
        "Spawner.args": ["--allow-root"],
        "Spawner.start_timeout": 60,
        "Spawner.http_timeout": 60,
        "Spawner.environment": {
            "CUMULUS_GATEWAY_URL": gateway_url,
            "JUPYTER_PATH": str(root / "share" / "jupyter"),
        },
        "SimpleLocalProcessSpawner.home_dir_template": str(root / "home" / "{username}"),
        "ConfigurableHTTPProxy.api_url": f"http://127.0.0.1:{hub.proxy_api_port}",
        "ConfigurableHTTPProxy.command": [str(shutil.which("configurable-http-proxy"))],
        "ConfigurableHTTPProxy.pid_file": str(root / "proxy.pid"),
    }
    return "".join(f"c.{name} = {value!r}\n" for name, value in settings.items())


class Hub:
    """A JupyterHub on loopback; ``admin`` calls its REST API as the tests' own service."""

    def __init__(self, root: Path, gateway_url: str, hub_port: int) -> None:
        self.root = root
        self.port, self.hub_port, self.proxy_api_port = free_port(), hub_port, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"http://127.0.0.1:{self.hub_port}/hub/api"
        self.admin_token = secrets.token_hex(24)
        self.server_pids: list[int] = []
        (root / "share" / "jupyter").mkdir(parents=True)
        kernelspec.install("0.1", "10m", name=GPU_KERNEL, prefix=str(root / "share" / "x"))
        shutil.move(
            root / "share" / "x" / "share" / "jupyter" / "kernels", root / "share" / "jupyter"
        )
        path = root / "jupyterhub_config.py"
        path.write_text(config(root, self, gateway_url))
        path.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "CUMULUS_"))}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        self._log = (root / "jupyterhub.log").open("ab")
        self.proc = subprocess.Popen(
            [str(BIN / "jupyterhub"), "-f", str(path)],
            cwd=root, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_until(self._answers, 90, "JupyterHub to answer")
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"jupyterhub exited with {self.proc.returncode}:\n{self.log()}")
        with contextlib.suppress(httpx.TransportError):
            return self.admin("GET", "/").status_code == 200
        return False

    def log(self) -> str:
        return (self.root / "jupyterhub.log").read_text(errors="replace")

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"token {self.admin_token}"}
        return httpx.request(method, self.api_url + path, headers=headers, timeout=60, **kwargs)

    def start_server(self, user: str) -> None:
        """The user's own single-user server, as their "Start My Server" starts it."""
        assert self.admin("POST", f"/users/{user}").status_code in (201, 409)
        assert self.admin("POST", f"/users/{user}/server").status_code in (201, 202)
        wait_until(lambda: self._ready(user), 90, f"{user}'s server to be ready")

    def _ready(self, user: str) -> bool:
        server = self.admin("GET", f"/users/{user}").json().get("servers", {}).get("")
        if not server or not server.get("ready"):
            return False
        pid = server.get("state", {}).get("pid")
        if pid:
            self.server_pids.append(int(pid))
        return True

    def user_token(self, user: str) -> str:
        """A token of the user's own, for their server (what their browser's login gives)."""
        body = {"note": "hub tier", "scopes": [f"access:servers!user={user}"]}
        response = self.admin("POST", f"/users/{user}/tokens", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["token"])

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()
        for pid in [*self.server_pids, *self._pid_from("proxy.pid"), *self._left_behind()]:
            _kill(pid)

    def _left_behind(self) -> list[int]:
        """Processes of this hub's servers still running (their kernels, whose connection
        files lie under the hub's directory): stopped by PID too."""
        mine = str(self.root)
        return [
            proc.pid
            for proc in psutil.process_iter(["cmdline"])
            if any(mine in part for part in proc.info["cmdline"] or [])
        ]

    def _pid_from(self, name: str) -> list[int]:
        with contextlib.suppress(OSError, ValueError):
            return [int((self.root / name).read_text().strip())]
        return []


def _kill(pid: int) -> None:
    """Stop the process by PID and wait for it, unless it has gone already."""
    with contextlib.suppress(psutil.NoSuchProcess):
        proc = psutil.Process(pid)
        proc.kill()
        proc.wait(timeout=30)


@pytest.fixture(scope="package")
def hub_api_port() -> int:
    """The hub's API port, fixed before either the gateway or the hub starts; the tier is
    skipped here when it cannot run."""
    why = why_unavailable()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"hub tier cannot run in CI: {why}")
        pytest.skip(why)
    return free_port()


@pytest.fixture(scope="package")
def gateway(tmp_path_factory: pytest.TempPathFactory, hub_api_port: int) -> Iterator[Gateway]:
    """The gateway, a service of the hub below; per-user quotas on."""
    tmp = tmp_path_factory.mktemp("hub-gateway")
    gw = Gateway(
        tmp / "state" / "chronos.sqlite3", tmp / "gateway.log",
        f"--CumulusIdentityProvider.hub_api_url=http://127.0.0.1:{hub_api_port}/hub/api",
        f"--CumulusIdentityProvider.hub_service_name={SERVICE}",
        f"--CumulusKernelManager.max_kernels_per_user={MAX_KERNELS}",
        env={"CUMULUS_CHECKPOINT_URL": (tmp / "l2").as_uri()},  # L2: a directory, per user
    )  # fmt: skip
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="package")
def hub(
    tmp_path_factory: pytest.TempPathFactory, gateway: Gateway, hub_api_port: int
) -> Iterator[Hub]:
    """The hub, with both users' servers started."""
    root = tmp_path_factory.mktemp("hub")
    hub = Hub(root, gateway.url, hub_api_port)
    try:
        for user in USERS:
            hub.start_server(user)
        yield hub
    finally:
        hub.stop()
