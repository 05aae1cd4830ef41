"""`CumulusClient.map` against a sequential loop of `run`, side by side in one run.

The same work both ways: ``--items`` (32) calls of a function that sleeps ``--work`` (0.2 s),
through our gateway on loopback (one pinned device). ``map`` spreads them over ``--slots`` (4)
sessions of 0.1 GPU (``max_parallel``), each kept warm for the items it takes; the anchor is
what one would write without it, ``[run(f, x, gpu=0.1) for x in items]``, each call in its own
partition. A loop over one kept session (``session=``) is printed too: the floor a sequential
loop can reach (items x work, plus one round trip each).

    python benchmarks/sdk_map.py [--items 32] [--slots 4] [--work 0.2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.relay_latency import TOKEN, ours
from cumulus_jupyter import CumulusClient

DEVICES = json.dumps([{"name": "bench-0", "vendor": "other", "memory_bytes": 2**34}])


def work(x: int, seconds: float) -> int:
    import time

    time.sleep(seconds)
    return x * x


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def measure(items: int, slots: int, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        server = ours(Path(tmp) / "state.sqlite3", devices=DEVICES)
        try:
            client = CumulusClient(server.url, TOKEN, on_progress=lambda line: None)
            kwargs = {"seconds": seconds}
            expected = [x * x for x in range(items)]
            client.run(work, 0, gpu=0.1, fn_kwargs=kwargs)  # warm the gateway and the imports
            results: list[object] = []
            mapped = timed(
                lambda: results.extend(
                    client.map(work, range(items), gpu=0.1, max_parallel=slots,
                               fn_kwargs=kwargs, progress=False)
                )
            )  # fmt: skip
            assert results == expected, results
            loop_run = timed(
                lambda: [client.run(work, x, gpu=0.1, fn_kwargs=kwargs) for x in range(items)]
            )
            kept = timed(
                lambda: [
                    client.run(work, x, gpu=0.1, fn_kwargs=kwargs, session="kept")
                    for x in range(items)
                ]
            )
            client.close()
        finally:
            server.stop()
    return {
        "items": items, "slots": slots, "work_s": seconds,
        "map_s": mapped, "sequential_run_s": loop_run, "sequential_kept_session_s": kept,
        "ratio_map_to_sequential_run": mapped / loop_run,
        "ratio_map_to_sequential_kept": mapped / kept,
        "ideal_map_s": items * seconds / slots,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--work", type=float, default=0.2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = measure(args.items, args.slots, args.work)
    print(
        f"{args.items} calls of {args.work:g} s on {args.slots} x 0.1 GPU:\n"
        f"  map                          {result['map_s']:7.2f} s "
        f"(ideal {result['ideal_map_s']:.2f} s)\n"
        f"  sequential run (anchor)      {result['sequential_run_s']:7.2f} s\n"
        f"  sequential run, kept session {result['sequential_kept_session_s']:7.2f} s\n"
        f"  map / sequential run         {result['ratio_map_to_sequential_run']:7.3f}\n"
        f"  map / kept-session loop      {result['ratio_map_to_sequential_kept']:7.3f}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
