"""Chronos create+release throughput against the durable store, on one core.

Prints our pairs per second beside the floor measured in the same run: the same two SQLite
WAL transactions (an INSERT, then an UPDATE) with none of Chronos's work around them. The
target from issue 2 is 2,000 pairs/s; the seed's was "under 2 s per partition".

    python benchmarks/chronos_throughput.py [--seconds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from chronos import Store, discover

TARGET_PAIRS_PER_S = 2_000


def ours(path: Path, seconds: float) -> float:
    with Store(discover(), path) as store:
        pairs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            store.release(store.create("0.5", "1h").id)
            pairs += 1
        return pairs / (time.perf_counter() - start)


def raw_sqlite(path: Path, seconds: float) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, state TEXT)")
    pairs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        db.execute("BEGIN IMMEDIATE")
        row = db.execute("INSERT INTO t (state) VALUES ('active') RETURNING id").fetchone()
        db.execute("COMMIT")
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE t SET state='released' WHERE id=?", row)
        db.execute("COMMIT")
        pairs += 1
    rate = pairs / (time.perf_counter() - start)
    db.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the issue asks
    with tempfile.TemporaryDirectory() as tmp:
        mine = ours(Path(tmp) / "chronos.sqlite3", args.seconds)
        floor = raw_sqlite(Path(tmp) / "raw.sqlite3", args.seconds)
    rows = [
        ("create+release pairs/s (Chronos store)", mine),
        ("same two transactions, bare SQLite", floor),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:>10,.0f}")
    print(f"{'Chronos / bare SQLite':<{width}}  {mine / floor:>10.2f}x")
    print(f"{'Chronos / target 2,000 pairs/s':<{width}}  {mine / TARGET_PAIRS_PER_S:>10.2f}x")
    print(f"{'ms per partition (seed target: 2000 ms)':<{width}}  {1000 / mine:>10.3f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "chronos_pairs_per_s": mine,
                    "sqlite_pairs_per_s": floor,
                    "target_pairs_per_s": TARGET_PAIRS_PER_S,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
