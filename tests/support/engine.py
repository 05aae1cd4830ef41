"""A Docker engine of the tests' own: ``dockerd`` started (and stopped, by PID) by the test setup,
with its own data root and socket, no iptables and no bridge (kernels use the host network)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from functools import cached_property
from pathlib import Path
from typing import Any

from tests.support.wait import wait_until

ROOT = Path("/var/lib/cumulus-tests")  # images persist between runs: the base is built once
RUN = Path("/run/cumulus-tests")  # short: containerd's socket paths must fit a sockaddr


class Engine:
    """``name`` keeps engines apart (socket, data, PID file); ``netns`` starts it inside that
    network namespace, as a second host would be."""

    def __init__(self, name: str = "docker", netns: str | None = None) -> None:
        self.name = name
        self.netns = netns
        self.socket = RUN / f"{name}.sock"
        self.url = f"unix://{self.socket}"
        self.log_path = ROOT / f"{name}d.log"
        self.pidfile = RUN / f"{name}d.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def unavailable() -> str | None:
        """Why no engine can be started here (None: it can)."""
        if os.geteuid() != 0:
            return "the docker tier needs root to start dockerd"
        missing = [c for c in ("dockerd", "debootstrap") if shutil.which(c) is None]
        if missing:
            return f"{', '.join(missing)} not installed (scripts/install-system-deps.sh)"
        return None

    def start(self) -> None:
        ROOT.mkdir(parents=True, exist_ok=True)
        RUN.mkdir(parents=True, exist_ok=True)
        self._stop_leftover()
        log = self.log_path.open("ab")
        exec_root = RUN / ("exec" if self.name == "docker" else f"{self.name}-exec")
        command = [
            "dockerd", f"--host={self.url}", f"--data-root={ROOT / self.name}",
            f"--exec-root={exec_root}", f"--pidfile={self.pidfile}",
            "--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=overlay2",
        ]  # fmt: skip
        if self.netns:
            # nsenter switches only the network namespace: `ip netns exec` would remount /sys
            # and hide the cgroup hierarchies dockerd needs
            command = ["nsenter", f"--net=/var/run/netns/{self.netns}", *command]
        self.proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            wait_until(self._up, 60, "dockerd to answer")
        except AssertionError:
            raise RuntimeError(f"dockerd did not answer within 60 s:\n{self.log()}") from None

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"dockerd exited ({self.proc.returncode}):\n{self.log()}")
        return self._answers()

    def _answers(self) -> bool:
        """``GET /_ping`` on the engine's socket answers OK (a plain socket: a Docker client
        made before the socket exists leaks its own)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(5)
            try:
                probe.connect(str(self.socket))
                probe.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                answer = probe.recv(4096)
            except OSError:
                return False
        return answer.startswith(b"HTTP/1.") and answer.rstrip().endswith(b"OK")

    @cached_property
    def client(self) -> Any:
        """One client of this engine for the whole run (closed by `stop`)."""
        import docker

        return docker.DockerClient(base_url=self.url)

    def _stop_leftover(self) -> None:
        """A dockerd of an interrupted earlier run (its PID file says which) is stopped."""
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pidfile.read_text())
            os.kill(pid, 15)
            wait_until(lambda: not _alive(pid), 10, f"the leftover dockerd {pid} to stop")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if "client" in self.__dict__:
            self.client.close()
            del self.__dict__["client"]
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
