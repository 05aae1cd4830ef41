"""Variable transfer throughput: ours (``%%cumulus`` push/pull through the gateway) against raw
zmq + pickle protocol 5 with out-of-band buffers over loopback, measured in the same run.

    python benchmarks/transfer.py [--sizes 1,64,256] [--json out.json]

Start-up: a gateway on loopback (local runtime) and one remote session; each size is sent
both ways three times and the best time is kept.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.relay_latency import TOKEN, ours
from cumulus_jupyter.connection import GatewaySettings
from cumulus_jupyter.session import RemoteSession

MIB = 2**20


def raw_zmq(array: np.ndarray) -> float:
    """Seconds to send ``array`` one way: pickle-5 frames over a tcp loopback PUSH/PULL pair."""
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = context.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    received: list[object] = []

    def receive() -> None:
        frames = pull.recv_multipart(copy=False)
        received.append(pickle.loads(frames[0].buffer, buffers=[f.buffer for f in frames[1:]]))

    best = float("inf")
    for _ in range(3):
        thread = threading.Thread(target=receive)
        thread.start()
        start = time.perf_counter()
        buffers: list[pickle.PickleBuffer] = []
        payload = pickle.dumps(array, protocol=5, buffer_callback=buffers.append)
        push.send_multipart([payload, *(b.raw() for b in buffers)], copy=False)
        thread.join()
        best = min(best, time.perf_counter() - start)
    push.close(0)
    pull.close(0)
    context.term()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,64,256")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = ours(Path(tmp) / "state.sqlite3", True)
        try:
            session = RemoteSession("bench", GatewaySettings(server.url, TOKEN))
            session.start("0.5", "1h", lambda line: None)
            for size in (int(s) for s in args.sizes.split(",")):
                array = np.random.default_rng(0).random(size * MIB // 8)
                raw = raw_zmq(array)
                push = min(
                    _timed(lambda a=array: session.push({"x": a}, force=True)) for _ in range(3)
                )
                pull = min(_timed(lambda: session.pull(["x"])) for _ in range(3))
                rows.append(
                    {
                        "MiB": size,
                        "raw_zmq_MiB_s": size / raw,
                        "push_MiB_s": size / push,
                        "pull_MiB_s": size / pull,
                    }
                )
            session.release()
        finally:
            server.stop()
    heads = (("size", 6), ("raw zmq+pickle5", 16), ("push", 10), ("pull", 10), ("push/raw", 9),
             ("pull/raw", 9))  # fmt: skip
    print("  ".join(f"{h:>{w}}" for h, w in heads))
    for r in rows:
        print(
            f"{r['MiB']:>4}MiB  {r['raw_zmq_MiB_s']:>12.0f}MiB/s  {r['push_MiB_s']:>6.0f}MiB/s  "
            f"{r['pull_MiB_s']:>6.0f}MiB/s  {r['push_MiB_s'] / r['raw_zmq_MiB_s']:>8.2f}x  "
            f"{r['pull_MiB_s'] / r['raw_zmq_MiB_s']:>8.2f}x"
        )
    print(
        "targets (issue 4): push and pull of 256 MiB >= 0.7x raw; ipyparallel anchor ~190/220 MiB/s"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def _timed(action: object) -> float:
    start = time.perf_counter()
    action()  # type: ignore[operator]
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
