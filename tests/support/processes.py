"""Stopping what a test started, by its PID."""

from __future__ import annotations

import signal
import subprocess


def terminate(proc: subprocess.Popen[bytes], grace: float = 60) -> None:
    """SIGTERM, and SIGKILL if it has not exited after ``grace`` seconds; reaped either way."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
