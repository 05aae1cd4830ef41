"""The embedded default: each kernel is a direct subprocess of the gateway host.

Kernels start in their own session (process group), without ``JPY_PARENT_PID``, so they
outlive a gateway crash and a restarted gateway can adopt them; they are identified by PID and
start time so that a recycled PID is never mistaken for a kernel.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Mapping
from typing import Any

import psutil

from gateway.runtimes.base import KernelProcess, Launch, Runtime, Started

_START_TIME_TOLERANCE_S = 0.05


class LocalProcess:
    """A kernel process on this host, whether we started it or adopted it."""

    def __init__(self, proc: psutil.Process, started: float) -> None:
        self._proc = proc
        self.pid = proc.pid
        self.started = started
        self.returncode: int | None = None
        # LocalProvisioner.wait closes these when a Popen has them; ours are not kept
        self.stdin = self.stdout = self.stderr = None

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        try:
            code = self._proc.wait(timeout=0)  # reaps our own child; polls an adopted one
        except psutil.TimeoutExpired:
            if self._proc.status() != psutil.STATUS_ZOMBIE:
                return None
            code = None
        except psutil.NoSuchProcess:
            code = None
        self.returncode = int(code) if code is not None else -1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            code = self._proc.wait(timeout=timeout)
        except psutil.NoSuchProcess:
            code = None
        except psutil.TimeoutExpired:
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0) from None
        self.returncode = int(code) if code is not None else -1
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            self._proc.send_signal(signum)

    def terminate(self) -> None:
        if self.poll() is None:
            self._proc.terminate()

    def kill(self) -> None:
        if self.poll() is None:
            self._proc.kill()

    def info(self) -> dict[str, Any]:
        return {"runtime": "local", "pid": self.pid, "started": self.started}

    def remove(self) -> None:
        """Nothing: an exited process leaves nothing behind."""


class LocalRuntime(Runtime):
    """Kernels as processes on the gateway host: no daemon, no image."""

    name = "local"

    async def launch(self, launch: Launch) -> Started:
        clean_env = {k: v for k, v in launch.env.items() if k != "JPY_PARENT_PID"}
        popen = await asyncio.to_thread(
            subprocess.Popen,
            list(launch.argv),
            env=clean_env,
            cwd=launch.cwd or None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: signals reach the whole kernel
        )
        proc = psutil.Process(popen.pid)
        # psutil reaps the child from now on; stop Popen from trying too
        popen.returncode = 0
        return Started(LocalProcess(proc, proc.create_time()))

    def adopt(self, info: Mapping[str, Any]) -> KernelProcess | None:
        try:
            proc = psutil.Process(int(info["pid"]))
            started = proc.create_time()
        except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, ValueError):
            return None
        if abs(started - float(info.get("started", 0))) > _START_TIME_TOLERANCE_S:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return LocalProcess(proc, started)
