"""Execute round trips taken in turns: one direct jupyter_client ``pass``, one through the
gateway's WebSocket, one warm ``%%cumulus`` ``pass`` cell, one ``%%cumulus`` cell pushing a
fresh 100 KiB value, and again, so that on a shared machine every kind sees the same load
(`relay_latency` takes each kind in a block of its own, which drifts with the machine). Each
round takes the four in an order of its own (shuffled, seeded), so that none always follows
the same one. Issue 14's bounds on the ``%%cumulus`` cells are read from these rows.

    python benchmarks/relay_in_turns.py [--n 300] [--seed 14] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from jupyter_client.manager import KernelManager
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import relay_latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=14, help="of the rounds' orders")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    kc = km.blocking_client()
    kc.start_channels()
    kc.wait_for_ready(60)

    def direct() -> None:
        msg_id = kc.execute("pass")
        while kc.get_shell_msg(timeout=60)["parent_header"].get("msg_id") != msg_id:
            continue

    samples: dict[str, list[float]] = {"direct": [], "gateway": [], "pass": [], "push": []}
    with tempfile.TemporaryDirectory() as tmp:
        server = relay_latency.ours(Path(tmp) / "state.sqlite3")
        try:
            kernel_id = server.start_kernel({"name": "cumulus-gpu"})
            session = uuid.uuid4().hex
            url = server.url.replace("http", "ws", 1)
            ws = connect(
                f"{url}/api/kernels/{kernel_id}/channels?session_id={session}",
                additional_headers=server.headers,
            )

            def gateway() -> None:
                msg_id, msg = relay_latency.execute_request(session)
                msg["content"]["store_history"] = True  # as jupyter_client's execute does
                ws.send(json.dumps(msg))
                while True:
                    reply = json.loads(ws.recv())
                    if reply["channel"] == "shell" and reply["parent_header"]["msg_id"] == msg_id:
                        return

            os.environ |= {"CUMULUS_GATEWAY_URL": server.url, "CUMULUS_TOKEN": relay_latency.TOKEN}
            shell = InteractiveShell.instance()
            shell.run_cell("%load_ext cumulus_jupyter")
            cells = {
                "pass": "%%cumulus --gpu 0.5 --session turns\npass\n",
                "push": "%%cumulus --session turns\nsize = len(blob)\n",
            }
            kinds: dict[str, Callable[[], object]] = {
                "direct": direct, "gateway": gateway,
                "pass": lambda: shell.run_cell(cells["pass"]).raise_error(),
                "push": lambda: shell.run_cell(cells["push"]).raise_error(),
            }  # fmt: skip
            with capture_output():  # the session's progress lines
                shell.user_ns["blob"] = os.urandom(100 * 1024)
                kinds["pass"]()
                order = list(kinds.items())
                shuffle = random.Random(args.seed).shuffle
                for i in range(args.n + 10):
                    shuffle(order)
                    for name, run in order:
                        shell.user_ns["blob"] = os.urandom(100 * 1024)  # pushed every time
                        started = time.perf_counter()
                        run()
                        if i >= 10:
                            samples[name].append(time.perf_counter() - started)
                shell.run_cell("%cumulus release turns")
            ws.close()
        finally:
            server.stop()
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    floor = statistics.median(samples["direct"])
    results = {}
    for name, taken in samples.items():
        median = statistics.median(taken)
        p90 = sorted(taken)[int(len(taken) * 0.9)]
        results[name] = {"median_ms": median * 1000, "p90_ms": p90 * 1000,
                         "vs_direct": median / floor}  # fmt: skip
        print(f"{name:8s} median {median * 1000:6.2f} ms  p90 {p90 * 1000:6.2f} ms  "
              f"{median / floor:4.2f}x direct")  # fmt: skip
    print("targets: %%cumulus pass <= 1.25x, pushing 100 KiB <= 1.4x (issue 14)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
