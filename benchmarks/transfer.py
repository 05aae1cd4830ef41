"""Variable transfer throughput: ours (``%%cumulus`` push/pull through the gateway) against raw
zmq + pickle protocol 5 with out-of-band buffers over loopback, measured in the same run.

    python benchmarks/transfer.py [--sizes 1,64,256] [--json out.json]

Start-up: a gateway on loopback (local runtime) with one remote session, the same gateway
serving HTTPS (a certificate from a CA the run makes) with another, and one ipyparallel engine
(the anchor: ``DirectView.push/pull``); each size is sent both ways three times by each and the
best time is kept. Over HTTPS the gateway decrypts and relays the data path itself (no
``splice``, no handover of the client's socket), so the ``https/http`` columns are what
encryption costs.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.relay_latency import TOKEN, Certificate, Server, ours
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


def ipyparallel_engine(tmp: str) -> tuple[Any, Any]:
    """One ipyparallel engine on loopback (controller + engine processes), as its docs start it."""
    import ipyparallel

    os.environ["IPYTHONDIR"] = str(Path(tmp) / "ipython")
    cluster = ipyparallel.Cluster(n=1, log_level=40)
    client = cluster.start_and_connect_sync(activate=False)
    client.wait_for_engines(1, timeout=120)
    return cluster, client[0]


def ipyparallel_times(view: Any, array: np.ndarray) -> tuple[float, float]:
    push = min(_timed(lambda: view.push({"x": array}, block=True)) for _ in range(3))
    pull = min(_timed(lambda: view.pull("x", block=True)) for _ in range(3))
    return push, pull


def push_pull(session: RemoteSession, array: np.ndarray) -> tuple[float, float]:
    """The best of three pushes and of three pulls of ``array``, in seconds."""
    push = min(_timed(lambda: session.push({"x": array}, force=True)) for _ in range(3))
    pull = min(_timed(lambda: session.pull(["x"])) for _ in range(3))
    return push, pull


def started(name: str, server: Server) -> RemoteSession:
    ca = str(server.tls.ca) if server.tls else None
    session = RemoteSession(name, GatewaySettings(server.url, TOKEN, ca))
    session.start("0.2", "1h", lambda line: None)
    return session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,64,256")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-ipyparallel", action="store_true", help="skip the anchor")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = ours(Path(tmp) / "state.sqlite3", True)
        secure = ours(Path(tmp) / "https.sqlite3", True, tls=Certificate(Path(tmp)))
        cluster, view = ipyparallel_engine(tmp) if not args.no_ipyparallel else (None, None)
        try:
            session, over_tls = started("bench", server), started("bench-https", secure)
            for size in (int(s) for s in args.sizes.split(",")):
                array = np.random.default_rng(0).random(size * MIB // 8)
                raw = raw_zmq(array)
                push, pull = push_pull(session, array)
                tls_push, tls_pull = push_pull(over_tls, array)
                ipp_push, ipp_pull = ipyparallel_times(view, array) if view else (0.0, 0.0)
                rows.append(
                    {
                        "MiB": size,
                        "raw_zmq_MiB_s": size / raw,
                        "push_MiB_s": size / push,
                        "pull_MiB_s": size / pull,
                        "https_push_MiB_s": size / tls_push,
                        "https_pull_MiB_s": size / tls_pull,
                        "ipyparallel_push_MiB_s": size / ipp_push if ipp_push else None,
                        "ipyparallel_pull_MiB_s": size / ipp_pull if ipp_pull else None,
                    }
                )
            session.release()
            over_tls.release()
        finally:
            server.stop()
            secure.stop()
            if cluster is not None:
                cluster.stop_cluster_sync()
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def print_table(rows: list[dict[str, Any]]) -> None:
    heads = ("size", "raw zmq", "ours push", "ours pull", "push/raw", "pull/raw",
             "ipp push", "ipp pull", "push/ipp", "pull/ipp")  # fmt: skip
    print("  ".join(f"{h:>10}" for h in heads), "(MiB/s; x = ratio)")
    for r in rows:
        raw, push, pull = r["raw_zmq_MiB_s"], r["push_MiB_s"], r["pull_MiB_s"]
        ipush, ipull = r["ipyparallel_push_MiB_s"], r["ipyparallel_pull_MiB_s"]
        cells = [f"{r['MiB']} MiB", f"{raw:.0f}", f"{push:.0f}", f"{pull:.0f}",
                 f"{push / raw:.2f}x", f"{pull / raw:.2f}x",
                 f"{ipush:.0f}" if ipush else "-", f"{ipull:.0f}" if ipull else "-",
                 f"{push / ipush:.1f}x" if ipush else "-",
                 f"{pull / ipull:.1f}x" if ipull else "-"]  # fmt: skip
        print("  ".join(f"{c:>10}" for c in cells))
    print("targets (issue 4), at 256 MiB: ours >= 0.7x raw zmq and >= 3x ipyparallel, each way")
    print("over HTTPS (the gateway decrypts and relays; MiB/s, and the ratio to plain HTTP):")
    for r in rows:
        push, pull = r["https_push_MiB_s"], r["https_pull_MiB_s"]
        print(
            f"{r['MiB']:>6} MiB  push {push:.0f} ({push / r['push_MiB_s']:.2f}x)  "
            f"pull {pull:.0f} ({pull / r['pull_MiB_s']:.2f}x)"
        )


def _timed(action: object) -> float:
    start = time.perf_counter()
    action()  # type: ignore[operator]
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
