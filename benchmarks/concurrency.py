"""32 kernels at once: execute round trips through our gateway vs direct jupyter_client, p50/p99.

Both sides run the same load side by side in one run: ``--kernels`` ipykernels (32), each driven
by its own client sending ``--n`` ``pass`` requests back to back, all clients at once. The
anchor talks ZMQ to local kernels directly; ours goes client → gateway WebSocket → kernel, each
kernel in its own 0.1 partition (the gateway is given four pinned devices, 40 tenths, so all 32
fit; the kernels are CPU ipykernels either way).

    python benchmarks/concurrency.py [--kernels 32] [--n 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.relay_latency import ours, over_websocket

DEVICES = json.dumps(
    [{"name": f"bench-{i}", "vendor": "other", "memory_bytes": 2**34} for i in range(4)]
)


async def direct(kernels: int, n: int) -> list[float]:
    managers = [AsyncKernelManager(kernel_name="python3") for _ in range(kernels)]
    await asyncio.gather(*(km.start_kernel() for km in managers))
    clients = [km.client() for km in managers]
    try:
        for kc in clients:
            kc.start_channels()
        await asyncio.gather(*(kc.wait_for_ready(timeout=120) for kc in clients))

        async def drive(kc: object) -> list[float]:
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                msg_id = kc.execute("pass")  # type: ignore[attr-defined]
                while (await kc.get_shell_msg(timeout=120))["parent_header"].get(  # type: ignore[attr-defined]
                    "msg_id"
                ) != msg_id:
                    continue
                samples.append(time.perf_counter() - t0)
            return samples

        results = await asyncio.gather(*(drive(kc) for kc in clients))
    finally:
        for kc in clients:
            kc.stop_channels()
        await asyncio.gather(*(km.shutdown_kernel(now=True) for km in managers))
    return [s for r in results for s in r]


def through_gateway(kernels: int, n: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = ours(Path(tmp) / "state.sqlite3", devices=DEVICES)
        try:
            body = {"name": "cumulus-gpu", "env": {"KERNEL_GPU": "0.1"}}
            with ThreadPoolExecutor(8) as pool:
                ids = list(pool.map(lambda _: server.start_kernel(body), range(kernels)))

            async def all_at_once() -> list[list[float]]:
                # over_websocket discards its first 10 as warm-up; n more are timed
                return await asyncio.gather(*(over_websocket(server.url, k, n) for k in ids))

            return [s for r in asyncio.run(all_at_once()) for s in r]
        finally:
            server.stop()


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", type=int, default=32)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    anchor = asyncio.run(direct(args.kernels, args.n + 10))
    ours = through_gateway(args.kernels, args.n)
    result = {
        "kernels": args.kernels,
        "direct_p50_ms": statistics.median(anchor) * 1000,
        "direct_p99_ms": percentile(anchor, 0.99) * 1000,
        "gateway_p50_ms": statistics.median(ours) * 1000,
        "gateway_p99_ms": percentile(ours, 0.99) * 1000,
    }
    print(f"{args.kernels} kernels at once, {args.n} round trips each")
    for side in ("direct", "gateway"):
        print(f"  {side:<8} p50 {result[f'{side}_p50_ms']:8.2f} ms   "
              f"p99 {result[f'{side}_p99_ms']:8.2f} ms")  # fmt: skip
    print(f"  gateway / direct: p50 {result['gateway_p50_ms'] / result['direct_p50_ms']:.2f}x, "
          f"p99 {result['gateway_p99_ms'] / result['direct_p99_ms']:.2f}x")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
