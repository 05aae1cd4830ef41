"""Scheduling policies side by side: a seeded synthetic lab day replayed through the real
`PartitionBroker` and the real Chronos `Store` (a temporary SQLite file) on a simulated clock.

    python benchmarks/scheduling.py [--seed 15] [--seeds 1-5] [--json out.json]

``--seeds``: the same day drawn from other seeds too (``1-5`` or ``1,3,7``), each replayed under
the three policies, then a summary with a row per seed and the targets met on each.

The trace: 2,000 requests from 48 users over a 12-hour working day on 8 devices, about 1.5x
what the devices can serve in the day (the backlog drains in the evening). 44 light users ask
mostly for a tenth to a third of a GPU (now and then a whole one or two) for minutes at a time,
each at their own pace and with their own typical length (5 to 20 minutes, spread around it,
5 min to 4 h); four heavy users submit sweeps of 4-8 whole-GPU, two-GPU or half-GPU jobs of
about half an hour to two hours at once. Arrivals follow the day (a morning and an afternoon
peak). A partition lasts what was asked unless released early: two in five are (the work was
done sooner), which no policy knows in advance. Every request waits as long as it takes.

Measured per policy: device utilization (GPU-seconds held over the devices' capacity) while
some request waits, which is what a policy can change, and over the whole replay, from the
first request to the last release, drain included; waits per request size (p50 / p95 / max);
Jain's fairness index over the users' mean slowdown ((wait + run) / run); and the
reservations: every request, once at the head of the queue, must start no later than the
reservation it got there, checked request by request.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import math
import random
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chronos import GpuAmount, Store
from chronos.device import Device, Vendor
from gateway.broker import PartitionBroker, PartitionRequest
from gateway.scheduler import Policy, Rules

DAY_S = 12 * 3600.0
DEVICES = 8
REQUESTS = 2_000
USERS = 48
HEAVY = 4
T0 = 1_796_112_000.0  # 2026-12-01 08:00 UTC: the simulated day starts here
MIN_S, MAX_S = 300, 4 * 3600
HEAVY_JOBS = 16  # each heavy user's, in sweeps of 4-8
HEAVY_MEDIAN_S = 1800  # a sweep job's typical duration
LIGHT_TYPICAL_S = (300, 1200)  # the range of light users' typical durations
LIGHT_AMOUNTS = ("0.1", "0.2", "0.3", "0.4", "0.5", "0.7", "0.9", "1", "2")
LIGHT_WEIGHTS = (0.50, 0.20, 0.10, 0.05, 0.06, 0.03, 0.02, 0.03, 0.01)
SIZES = (("0.1-0.3", 0.0, 0.3), ("0.4-0.9", 0.4, 0.9), ("1", 1.0, 1.0), ("2", 2.0, 2.0))


@dataclass(frozen=True)
class Job:
    """One request of the trace: who, when (seconds into the day), how much, for how long,
    and how long it really runs (at most its duration)."""

    owner: str
    at: float
    amount: str
    duration_s: int
    runs_s: float


def _arrival(rng: random.Random) -> float:
    """A time of day with two peaks (mid-morning, mid-afternoon) and quiet edges."""
    while True:
        t = rng.choice((0.25, 0.7)) * DAY_S + rng.gauss(0, DAY_S / 7)
        if 0 <= t < DAY_S:
            return t


def _duration(rng: random.Random, median_s: float, spread: float) -> int:
    """Log-normal around ``median_s``, kept to 5 min - 4 h, in whole minutes."""
    seconds = median_s * math.exp(rng.gauss(0, spread))
    return int(min(MAX_S, max(MIN_S, round(seconds / 60) * 60)))


def trace(seed: int) -> list[Job]:
    """The lab day: light users' short fractional work, each at their own pace and length;
    heavy users' sweeps of whole-GPU jobs submitted in batches."""
    rng = random.Random(seed)
    jobs: list[Job] = []
    for owner in (f"heavy{i}" for i in range(1, HEAVY + 1)):  # sweeps of 4-8 jobs at once
        while sum(j.owner == owner for j in jobs) < HEAVY_JOBS:
            at = _arrival(rng)
            for _ in range(rng.randint(4, 8)):
                amount = rng.choices(("1", "2", "0.5"), (0.5, 0.35, 0.15))[0]
                jobs.append(_job(rng, owner, at, amount, _duration(rng, HEAVY_MEDIAN_S, 0.6)))
    light = [f"user{i:02d}" for i in range(1, USERS - HEAVY + 1)]
    pace = [rng.uniform(0.4, 1.6) for _ in light]  # how often each asks
    low, high = (math.log(s) for s in LIGHT_TYPICAL_S)
    typical = {u: math.exp(rng.uniform(low, high)) for u in light}
    while len(jobs) < REQUESTS:
        owner = rng.choices(light, pace)[0]
        amount = rng.choices(LIGHT_AMOUNTS, LIGHT_WEIGHTS)[0]
        duration = _duration(rng, typical[owner], 0.5)
        jobs.append(_job(rng, owner, _arrival(rng), amount, duration))
    return sorted(jobs[:REQUESTS], key=lambda j: (j.at, j.owner))


def _job(rng: random.Random, owner: str, at: float, amount: str, duration: int) -> Job:
    runs = duration * rng.uniform(0.3, 1.0) if rng.random() < 0.4 else float(duration)
    return Job(owner, round(at, 1), amount, duration, runs)


class SimClock:
    """The simulated "now": the store's clock, hence the broker's."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Served:
    job: Job
    request: PartitionRequest
    started: float  # seconds into the day
    reserved: float | None  # the reservation it got at the head, seconds into the day


async def replay(jobs: list[Job], policy: Policy, state: Path) -> list[Served]:
    """Every job through ``broker.acquire`` on the simulated clock; releases through
    ``broker.release``; expiries seen by ``broker.pump`` (as the supervisor's tick does)."""
    clock = SimClock()
    devices = [
        Device(i, f"sim{i}", Vendor.NVIDIA, "gpu", 80 * 2**30, uuid=f"SIM-{i}")
        for i in range(DEVICES)
    ]
    store = Store(devices, state, clock=clock)
    created = 0

    def count(_: float) -> None:
        nonlocal created
        created += 1

    broker = PartitionBroker(store, rules=Rules(policy), on_waited=count)
    events: list[tuple[float, int, str, Any]] = [
        (T0 + j.at, i, "arrive", j) for i, j in enumerate(jobs)
    ]
    heapq.heapify(events)
    seq = len(events)
    served: list[Served] = []

    async def user(job: Job) -> None:
        nonlocal seq
        request = PartitionRequest(GpuAmount.parse(job.amount), job.duration_s, job.owner)
        partition = await broker.acquire(request, timeout=1e9)
        start = partition.created_at
        reserved = request.reserved_at - T0 if request.reserved_at is not None else None
        served.append(Served(job, request, start - T0, reserved))
        seq += 1
        if job.runs_s < job.duration_s:
            heapq.heappush(events, (start + job.runs_s, seq, "release", partition.id))
        else:  # it expires: the supervisor's next tick sees it
            heapq.heappush(events, (partition.expires_at, seq, "tick", None))

    tasks = []
    try:
        while events:
            clock.now = events[0][0]
            while events and events[0][0] == clock.now:
                _, _, kind, payload = heapq.heappop(events)
                if kind == "arrive":
                    tasks.append(asyncio.ensure_future(user(payload)))
                elif kind == "release":
                    broker.release(payload, "done")
            await _settle(lambda: len(served) == created)
            broker.pump()
            await _settle(lambda: len(served) == created)
        assert len(served) == len(jobs)
        assert broker.queue_length == 0
        await asyncio.gather(*tasks)
    finally:
        broker.close()
    return served


async def _settle(done: Any) -> None:
    """Let the requesters' tasks run until each partition handed out has been taken."""
    await asyncio.sleep(0)
    while not done():
        await asyncio.sleep(0)


# -- what is measured --------------------------------------------------------------------------


def measure(served: list[Served]) -> dict[str, Any]:
    first = min(s.job.at for s in served)
    last = max(s.started + s.job.runs_s for s in served)
    held = sum(GpuAmount.parse(s.job.amount).value * s.job.runs_s for s in served)
    waits: dict[str, list[float]] = defaultdict(list)
    slowdowns: dict[str, list[float]] = defaultdict(list)
    for s in served:
        wait = s.started - s.job.at
        value = GpuAmount.parse(s.job.amount).value
        size = next(name for name, low, high in SIZES if low <= value <= high)
        waits[size].append(wait)
        slowdowns[s.job.owner].append((wait + s.job.runs_s) / s.job.runs_s)
    means = [statistics.fmean(v) for v in slowdowns.values()]
    heads = [s for s in served if s.reserved is not None]
    late = [s for s in heads if s.started > s.reserved + 1e-6]  # type: ignore[operator]
    return {
        "utilization": held / (DEVICES * (last - first)),
        "utilization_contended": _contended(served),
        "makespan_h": (last - first) / 3600,
        "waits_min": {size: _quantiles(w) for size, w in waits.items()},
        "wait_mean_min": statistics.fmean(s.started - s.job.at for s in served) / 60,
        "jain_slowdown": sum(means) ** 2 / (len(means) * sum(m * m for m in means)),
        "mean_slowdown_heavy": _mean(
            [m for o, m in zip(slowdowns, means, strict=True) if o.startswith("heavy")]
        ),
        "mean_slowdown_light": _mean(
            [m for o, m in zip(slowdowns, means, strict=True) if not o.startswith("heavy")]
        ),
        "reached_head": len(heads),
        "late_at_head": len(late),
    }


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def _contended(served: list[Served]) -> float:
    """Utilization over the time some request was waiting (the queue was not empty)."""
    edges: list[tuple[float, int, float]] = []  # (time, waiting delta, GPUs delta)
    for s in served:
        gpus = GpuAmount.parse(s.job.amount).value
        if s.started > s.job.at:
            edges += [(s.job.at, 1, 0.0), (s.started, -1, 0.0)]
        edges += [(s.started, 0, gpus), (s.started + s.job.runs_s, 0, -gpus)]
    edges.sort()
    waiting, gpus, busy, span, last = 0, 0.0, 0.0, 0.0, edges[0][0]
    for t, dw, dg in edges:
        if waiting > 0:
            span += t - last
            busy += gpus * (t - last)
        waiting, gpus, last = waiting + dw, gpus + dg, t
    return busy / (DEVICES * span) if span else 1.0


def _quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 60

    return {"n": len(ordered), "p50": pick(0.5), "p95": pick(0.95), "max": ordered[-1] / 60}


def print_table(results: dict[str, dict[str, Any]], seconds: dict[str, float]) -> None:
    policies = list(results)
    rows: list[tuple[str, ...]] = [("", *policies)]
    rows.append(("device utilization while requests wait",
                 *(f"{results[p]['utilization_contended']:.1%}" for p in policies)))  # fmt: skip
    rows.append(("device utilization, first request to last release",
                 *(f"{results[p]['utilization']:.1%}" for p in policies)))  # fmt: skip
    rows.append(("makespan (h)", *(f"{results[p]['makespan_h']:.1f}" for p in policies)))
    rows.append(("mean wait (min)", *(f"{results[p]['wait_mean_min']:.0f}" for p in policies)))
    for size, *_ in SIZES:
        n = results[policies[0]]["waits_min"][size]["n"]
        rows.append(
            (
                f"wait p50/p95/max (min), {size} GPU (n={n})",
                *(_spread(results[p]["waits_min"][size]) for p in policies),
            )
        )
    rows.append(("Jain index, users' mean slowdown",
                 *(f"{results[p]['jain_slowdown']:.3f}" for p in policies)))  # fmt: skip
    rows.append(("mean slowdown, heavy / light users",
                 *(f"{results[p]['mean_slowdown_heavy']:.1f} / "
                   f"{results[p]['mean_slowdown_light']:.1f}" for p in policies)))  # fmt: skip
    rows.append(("started after their reservation",
                 *(f"{results[p]['late_at_head']} of {results[p]['reached_head']}"
                   for p in policies)))  # fmt: skip
    rows.append(("replay time (s)", *(f"{seconds[p]:.1f}" for p in policies)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                        for i, c in enumerate(r)))  # fmt: skip


def _spread(q: dict[str, float]) -> str:
    return f"{q['p50']:.0f} / {q['p95']:.0f} / {q['max']:.0f}"


def targets(results: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """The issue's targets, each met or not."""
    fifo, backfill, fair = (results[p.value] for p in Policy)
    use, whole = "utilization_contended", "utilization"
    return {
        "backfill utilization (while requests wait) >= 1.15x fifo's": backfill[use]
        >= 1.15 * fifo[use],
        "backfill utilization (first request to last release) >= 1.15x fifo's": backfill[whole]
        >= 1.15 * fifo[whole],
        "backfill utilization >= 85% (both ways)": min(backfill[use], backfill[whole]) >= 0.85,
        "fair Jain >= 0.9": fair["jain_slowdown"] >= 0.9,
        "fair Jain > fifo Jain": fair["jain_slowdown"] > fifo["jain_slowdown"],
        "no request started after its reservation": all(
            r["late_at_head"] == 0 for r in results.values()
        ),
    }


def run_seed(seed: int) -> tuple[list[Job], dict[str, dict[str, Any]], dict[str, float]]:
    """The day drawn from ``seed``, replayed under each policy: its jobs, what was measured
    per policy, and each replay's seconds."""
    jobs = trace(seed)
    results: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for policy in Policy:
            began = time.perf_counter()
            served = asyncio.run(replay(jobs, policy, Path(tmp) / f"{policy.value}.sqlite3"))
            seconds[policy.value] = time.perf_counter() - began
            results[policy.value] = measure(served)
    return jobs, results, seconds


def _seeds(text: str) -> list[int]:
    """``1-5`` or ``1,3,7`` (or both: ``1-3,9``)."""
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seeds += range(int(low), int(high or low) + 1)
    return seeds


def print_summary(by_seed: dict[int, dict[str, dict[str, Any]]]) -> None:
    """A row per seed: the utilization ratio, fair's and fifo's Jain, late starts, targets."""
    head = ("seed", "util fifo", "util backfill", "ratio", "backfill while waiting",
            "Jain fifo", "Jain backfill", "Jain fair", "late", "targets")  # fmt: skip
    rows: list[tuple[str, ...]] = [head]
    for seed, results in by_seed.items():
        fifo, backfill, fair = (results[p.value] for p in Policy)
        met = targets(results)
        rows.append((
            str(seed), f"{fifo['utilization']:.1%}", f"{backfill['utilization']:.1%}",
            f"{backfill['utilization'] / fifo['utilization']:.3f}x",
            f"{backfill['utilization_contended']:.1%}",
            f"{fifo['jain_slowdown']:.3f}", f"{backfill['jain_slowdown']:.3f}",
            f"{fair['jain_slowdown']:.3f}",
            str(sum(r["late_at_head"] for r in results.values())),
            f"{sum(met.values())}/{len(met)}",
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        print("  ".join(c.rjust(widths[i]) for i, c in enumerate(r)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--seeds", type=_seeds, default=[], help="more seeds: 1-5 or 1,3,7")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    jobs, results, seconds = run_seed(args.seed)
    offered = sum(GpuAmount.parse(j.amount).value * j.runs_s for j in jobs)
    print(
        f"{len(jobs)} requests from {len({j.owner for j in jobs})} users ({HEAVY} heavy) over "
        f"{DAY_S / 3600:.0f} h on {DEVICES} devices; offered load "
        f"{offered / (DEVICES * DAY_S):.2f}x the day's capacity; seed {args.seed}\n"
    )
    print_table(results, seconds)
    met = targets(results)
    print()
    for name, ok in met.items():
        print(f"{'ok    ' if ok else 'MISSED'}  {name}")
    by_seed = {args.seed: results}
    others = [seed for seed in args.seeds if seed != args.seed]
    for seed in others:
        by_seed[seed] = run_seed(seed)[1]
    if others:
        print()
        print_summary(by_seed)
    if args.json:
        out = {"seed": args.seed, "requests": len(jobs), "devices": DEVICES, "results": results,
               "targets": met, "replay_s": seconds,
               "seeds": {str(seed): {"results": r, "targets": targets(r)}
                         for seed, r in by_seed.items()}}  # fmt: skip
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
