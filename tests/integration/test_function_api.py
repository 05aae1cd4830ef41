"""``run(fn)`` and ``@remote`` from a plain Python script (no notebook), against a real gateway."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.gateway import Gateway

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent(
    """
    import numpy as np
    from cumulus_jupyter import remote, run

    def train(data, scale=1):
        print("training on", len(data), flush=True)
        return float((data * scale).sum())

    print("result", run(train, np.arange(4), scale=2, gpu=0.3, duration="2m"))

    @remote(gpu=0.2)
    def amount():
        import os
        return os.environ["CHRONOS_GPU_AMOUNT"]

    print("amount", amount())

    try:
        run(lambda: 1 / 0)
    except Exception as exc:
        print("error", type(exc).__name__, "ZeroDivisionError" in str(exc))

    @remote(gpu=0.1, session="kept")
    def pid():
        import os
        return os.getpid()

    print("same kernel", pid() == pid())
    """
)


def test_run_and_remote_from_a_plain_script(gateway: Gateway, tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = os.environ | {"CUMULUS_GATEWAY_URL": gateway.url, "CUMULUS_TOKEN": gateway.token}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "training on 4",
        "result 12.0",
        "amount 0.2",
        "error RemoteError True",
        "same kernel True",
    ]
    assert "Cumulus: partition p-" in done.stderr
    assert (
        gateway.get("/api/kernels").json() == []
    )  # every partition went back, the kept one at exit
    assert gateway.get("/api/cumulus/partitions").json() == []
