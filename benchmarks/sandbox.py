"""A sandboxed kernel's cold start against a plain ipykernel's, through the local runtime.

    python benchmarks/sandbox.py [--rounds 9] [--json out.json]

Each round starts, by `LocalRuntime.launch`, one plain kernel (``--LocalRuntime.sandbox=none``:
``python -m ipykernel_launcher``, the gateway's interpreter) and one sandboxed one (bubblewrap,
its own uid, its cgroup with a memory and CPU limit, the built kernel environment, through
``chronos.confine`` as the gateway starts them), in alternating order, and times each from the
launch to its first ``kernel_info`` reply. The kernel environment is built before the first
round (a cold start is a kernel's, not the environment's, which is built once per host).
Reported: the median of each and their ratio (issue 16 bounds it at 1.25).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.connect import write_connection_file

from gateway.runtimes import Launch, LocalRuntime
from gateway.sandbox import probe

BOUND = 1.25


async def cold_start(runtime: LocalRuntime, module: list[str], directory: Path) -> float:
    """Seconds from the launch to the kernel's first ``kernel_info`` reply."""
    kernel_id = str(uuid.uuid4())
    path = str(directory / f"kernel-{kernel_id}.json")
    write_connection_file(path, ip="127.0.0.1")
    argv = [sys.executable, "-m", *module, "-f", path]
    env = {k: v for k, v in os.environ.items() if k != "JPY_PARENT_PID"}
    client = AsyncKernelClient(connection_file=path)
    client.load_connection_file()
    began = time.perf_counter()
    started = await runtime.launch(Launch(argv, env, None, kernel_id))
    try:
        client.start_channels()
        await client.wait_for_ready(timeout=120)
        return time.perf_counter() - began
    finally:
        client.stop_channels()
        started.process.kill()
        await asyncio.to_thread(started.process.wait, 30)
        started.process.remove()


async def measure(rounds: int) -> dict[str, Any]:
    plain = LocalRuntime(sandbox="none")
    boxed = LocalRuntime(sandbox="bwrap", memory="2G", cpus=2)
    boxed.check()
    await asyncio.to_thread(boxed.kernel_env)  # built once per host, not per kernel
    times: dict[str, list[float]] = {"plain": [], "sandboxed": []}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        await cold_start(plain, ["ipykernel_launcher"], directory)  # warm the page cache
        await cold_start(boxed, ["chronos.confine", "ipykernel_launcher"], directory)
        for i in range(rounds):
            order = ("plain", "sandboxed") if i % 2 == 0 else ("sandboxed", "plain")
            for name in order:
                runtime, module = (
                    (plain, ["ipykernel_launcher"])
                    if name == "plain"
                    else (boxed, ["chronos.confine", "ipykernel_launcher"])
                )
                times[name].append(await cold_start(runtime, module, directory))
    plain_ms = 1000 * statistics.median(times["plain"])
    boxed_ms = 1000 * statistics.median(times["sandboxed"])
    return {
        "rounds": rounds,
        "plain_ipykernel_median_ms": round(plain_ms, 1),
        "sandboxed_median_ms": round(boxed_ms, 1),
        "ratio": round(boxed_ms / plain_ms, 3),
        "bound": BOUND,
        "plain_ms": [round(1000 * t, 1) for t in times["plain"]],
        "sandboxed_ms": [round(1000 * t, 1) for t in times["sandboxed"]],
        "cgroup": boxed._cgroups is not None,
        "as_root": os.getuid() == 0,
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 1), os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    why_not = probe()
    if why_not is not None:
        print(f"sandbox benchmark skipped: {why_not}")
        return
    with _quiet():  # the kernels' banners go to the benchmark's own stdout otherwise
        out = asyncio.run(measure(args.rounds))
    print(
        f"cold start: plain ipykernel {out['plain_ipykernel_median_ms']:.0f} ms, sandboxed "
        f"{out['sandboxed_median_ms']:.0f} ms: {out['ratio']:.2f}x (bound {BOUND}x)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
