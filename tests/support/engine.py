"""A Docker engine of the tests' own: ``dockerd`` started (and stopped, by PID) by the test setup,
with its own data root and socket, no iptables and no bridge (kernels use the host network)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from functools import cached_property
from pathlib import Path
from typing import Any

ROOT = Path("/var/lib/cumulus-tests")  # images persist between runs: the base is built once
RUN = Path("/run/cumulus-tests")  # short: containerd's socket paths must fit a sockaddr


class Engine:
    def __init__(self) -> None:
        self.socket = RUN / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.log_path = ROOT / "dockerd.log"
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
        command = [
            "dockerd", f"--host={self.url}", f"--data-root={ROOT / 'docker'}",
            f"--exec-root={RUN / 'exec'}", f"--pidfile={RUN / 'dockerd.pid'}",
            "--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=overlay2",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited ({self.proc.returncode}):\n{self.log()}")
            if self._answers():
                return
            time.sleep(0.2)
        raise RuntimeError(f"dockerd did not answer within 60 s:\n{self.log()}")

    def _answers(self) -> bool:
        import docker

        probe = docker.DockerClient(base_url=self.url)
        try:
            probe.ping()
        except docker.errors.DockerException:
            return False
        finally:
            probe.close()
        return True

    @cached_property
    def client(self) -> Any:
        """One client of this engine for the whole run (closed by `stop`)."""
        import docker

        return docker.DockerClient(base_url=self.url)

    def _stop_leftover(self) -> None:
        """A dockerd of an interrupted earlier run (its PID file says which) is stopped."""
        pidfile = RUN / "dockerd.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text())
            os.kill(pid, 15)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.1)

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
