"""Soak: many create → execute → end cycles against a real gateway, a few at a time, then proof
that nothing leaked and that the gateway did not grow.

Each cycle starts a kernel (sandboxed by bubblewrap, in a cgroup, on the local runtime, with
its data socket), runs a cell over the kernel WebSocket and checks its output, then ends it one
of three ways in turn: **deleted** (``DELETE /api/kernels/ID``), **expired** (its partition's
end moved to now in the state file: the gateway's supervisor stops it) or **killed** (SIGKILL
to its sandbox; the gateway's restarter brings it back, and it is deleted then).

Afterwards (`Report.problems`): no kernel listed or running (no process of the gateway's, none
that names a kernel), no partition, no connection file, no data socket, no kernel directory
or cgroup (the local runtime's container); and the gateway's resident memory and open file
descriptors at the end at most ``limit`` (10 %) above what they were at the baseline cycle
(cycle 100, or a quarter of the run when it is shorter), both measured with no cycle in flight.

``make soak`` runs ``python -m benchmarks.soak --cycles 1000 --parallel 8``; the ``soak`` test
tier (tests/soak) runs the same function with 200 cycles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support, run as a script
from tests.support.gateway import Gateway, set_expiry
from tests.support.kernel_ws import KernelSocket

ENDS = ("delete", "expire", "kill")
LIMIT = 0.10  # growth allowed from the baseline to the end
END_TIMEOUT_S = 120.0  # how long a cycle waits for the gateway to end its kernel


@dataclass
class Sample:
    cycle: int  # cycles finished when it was taken
    rss: int  # the gateway's resident memory, bytes
    fds: int  # its open file descriptors


@dataclass
class Report:
    cycles: int
    parallel: int
    sandbox: str
    seconds: float = 0.0
    ends: Counter[str] = field(default_factory=Counter)
    busy: dict[str, float] = field(default_factory=dict)  # seconds spent in cycles, by end
    failures: list[str] = field(default_factory=list)
    start: Sample | None = None  # before the first cycle
    baseline: Sample | None = None  # at the baseline cycle, nothing in flight
    end: Sample | None = None  # after the last, nothing in flight
    peak: Sample | None = None  # the largest RSS seen while cycles ran
    leftovers: dict[str, list[str]] = field(default_factory=dict)
    limit: float = LIMIT

    def growth(self) -> tuple[float, float]:
        """RSS and FD growth from the baseline to the end (0.05: +5 %)."""
        assert self.baseline is not None
        assert self.end is not None
        return (
            self.end.rss / self.baseline.rss - 1,
            self.end.fds / self.baseline.fds - 1,
        )

    def problems(self) -> list[str]:
        """What is wrong after the run, one line each; empty when it held."""
        found = [f"cycle failed: {f}" for f in self.failures]
        found += [f"left behind: {kind}: {', '.join(what[:5])}"
                  for kind, what in self.leftovers.items() if what]  # fmt: skip
        rss, fds = self.growth()
        if rss > self.limit + 1e-9:  # exactly +10 % holds
            found.append(f"resident memory grew {rss:+.1%} from cycle {self.baseline_cycle()}")
        if fds > self.limit + 1e-9:
            found.append(
                f"open file descriptors grew {fds:+.1%} from cycle {self.baseline_cycle()}"
            )
        return found

    def baseline_cycle(self) -> int:
        return self.baseline.cycle if self.baseline else 0

    def summary(self) -> str:
        rss, fds = self.growth()
        mib = 2**20
        assert self.start is not None
        assert self.baseline is not None
        assert self.end is not None
        return (
            f"soak: {self.cycles} cycles, {self.parallel} at a time, sandbox={self.sandbox}, "
            f"{self.seconds:.0f} s ({self._per_cycle()}); RSS {self.start.rss / mib:.1f} → "
            f"{self.baseline.rss / mib:.1f} (cycle {self.baseline.cycle}) → "
            f"{self.end.rss / mib:.1f} MiB ({rss:+.1%}); FDs {self.start.fds} → "
            f"{self.baseline.fds} → {self.end.fds} ({fds:+.1%}); "
            f"left behind: {sum(len(v) for v in self.leftovers.values())}"
        )

    def _per_cycle(self) -> str:
        return ", ".join(
            f"{n} {end.rstrip('e')}ed, {self.busy[end] / n:.1f} s each"
            for end, n in sorted(self.ends.items())
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ends"] = dict(self.ends)
        data["busy"] = {k: round(v, 1) for k, v in self.busy.items()}
        data["growth"] = dict(zip(("rss", "fds"), self.growth(), strict=True))
        data["problems"] = self.problems()
        return data


def baseline_at(cycles: int) -> int:
    """The cycle growth is measured from: 100, or a quarter of a shorter run."""
    return 100 if cycles >= 400 else max(1, cycles // 4)


def soak(
    cycles: int, parallel: int, work: Path, sandbox: str = "bwrap",
    progress: Callable[[str], None] = print,
) -> Report:  # fmt: skip
    """Run the soak against a gateway of its own under ``work``; the report says what held."""
    report = Report(cycles, parallel, sandbox)
    gw = _gateway(work, sandbox)
    try:
        assert gw.proc is not None
        gateway = psutil.Process(gw.proc.pid)
        report.start = _sample(gateway, 0)
        started = time.monotonic()
        split = baseline_at(cycles)
        seen: set[str] = set()
        asyncio.run(_cycles(gw, gateway, range(split), parallel, report, seen, progress))
        report.baseline = _quiet_sample(gw, gateway, split)
        asyncio.run(_cycles(gw, gateway, range(split, cycles), parallel, report, seen, progress))
        report.end = _quiet_sample(gw, gateway, cycles)
        report.seconds = time.monotonic() - started
        report.leftovers = leftovers(gw, work, seen)
    finally:
        gw.stop()
    return report


def _gateway(work: Path, sandbox: str) -> Gateway:
    args = [
        f"--LocalRuntime.sandbox={sandbox}", f"--LocalRuntime.sandbox_dir={work / 'sandbox'}",
        f"--CumulusKernelManager.data_socket_dir={work / 'sockets'}",
        "--CumulusKernelManager.launch_timeout=300",
    ]  # fmt: skip
    if sandbox == "bwrap":
        args.append("--LocalRuntime.memory=1G")  # a cgroup per kernel, to be removed each time
    return Gateway(work / "state" / "chronos.sqlite3", work / "gateway.log", *args)


async def _cycles(
    gw: Gateway, gateway: psutil.Process, indexes: range, parallel: int, report: Report,
    seen: set[str], progress: Callable[[str], None],
) -> None:  # fmt: skip
    gate = asyncio.Semaphore(parallel)
    async with httpx.AsyncClient(base_url=gw.url, headers=gw.headers(), timeout=300) as client:

        async def one(index: int) -> None:
            async with gate:
                began = time.monotonic()
                try:
                    end = await cycle(gw, client, index, seen)
                except Exception as exc:  # counted and reported: the soak goes on
                    report.failures.append(f"{index}: {type(exc).__name__}: {exc}"[:300])
                    return
                report.ends[end] += 1
                report.busy[end] = report.busy.get(end, 0.0) + time.monotonic() - began
                done = sum(report.ends.values()) + len(report.failures)
                sample = _sample(gateway, done)
                if report.peak is None or sample.rss > report.peak.rss:
                    report.peak = sample
                if done % 50 == 0:
                    progress(f"soak: {done} cycles, RSS {sample.rss / 2**20:.1f} MiB, "
                             f"{sample.fds} FDs, {len(report.failures)} failed")  # fmt: skip

        await asyncio.gather(*(one(i) for i in indexes))


async def cycle(gw: Gateway, client: httpx.AsyncClient, index: int, seen: set[str]) -> str:
    """One cycle: start, execute, end (by the index: deleted, expired, killed); the end."""
    end = ENDS[index % len(ENDS)]
    env = {"KERNEL_GPU": "0.1", "KERNEL_DURATION": "600", "KERNEL_USERNAME": f"soak{index % 4}"}
    made = await client.post("/api/kernels", json={"name": "cumulus-gpu", "env": env})
    if made.status_code != 201:
        raise RuntimeError(f"start: {made.status_code} {made.text[:200]}")
    kernel_id = made.json()["id"]
    seen.add(kernel_id)
    try:
        await _execute(gw, kernel_id, index)
    except BaseException:
        await client.delete(f"/api/kernels/{kernel_id}")
        raise
    if end == "delete":
        await _delete(client, kernel_id)
    elif end == "expire":
        partition = made.json()["cumulus"]["partition_id"]
        await asyncio.to_thread(set_expiry, gw, partition, -1)
        await _until(lambda: _gone(client, kernel_id), "the supervisor to stop it at expiry")
    else:
        old = await asyncio.to_thread(_sandbox_pid, gw, kernel_id)
        os.kill(old, signal.SIGKILL)
        await _until(lambda: _restarted(gw, client, kernel_id, old), "the restarter")
        await _delete(client, kernel_id)
    return end


async def _execute(gw: Gateway, kernel_id: str, index: int) -> None:
    ws = await KernelSocket.open(
        gw.url, gw.token, kernel_id, "v1", open_timeout=END_TIMEOUT_S, ping_timeout=END_TIMEOUT_S
    )
    try:
        reply = await ws.execute(f"print({index} * 2)", timeout=120)
    finally:
        await ws.close()
    if reply.reply["status"] != "ok" or reply.stdout.strip() != str(index * 2):
        raise RuntimeError(f"execute: {reply.reply.get('status')} {reply.stdout!r}")


async def _delete(client: httpx.AsyncClient, kernel_id: str) -> None:
    gone = await client.delete(f"/api/kernels/{kernel_id}")
    if gone.status_code not in (204, 404, 410):
        raise RuntimeError(f"delete: {gone.status_code} {gone.text[:200]}")


async def _gone(client: httpx.AsyncClient, kernel_id: str) -> bool:
    return (await client.get(f"/api/kernels/{kernel_id}")).status_code in (404, 410)


async def _restarted(gw: Gateway, client: httpx.AsyncClient, kernel_id: str, old: int) -> bool:
    """The gateway saw the death: the kernel runs again from a new process, or is gone."""
    if await _gone(client, kernel_id):
        return True
    now = await asyncio.to_thread(_sandbox_pid, gw, kernel_id, False)
    return now not in (0, old)


async def _until(check: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + END_TIMEOUT_S
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {END_TIMEOUT_S:.0f} s for {what}")
        await asyncio.sleep(0.5)


def _sandbox_pid(gw: Gateway, kernel_id: str, required: bool = True) -> int:
    """The kernel's own process, the gateway's child (a sandbox's parent shell, or the kernel)."""
    assert gw.proc is not None
    for child in psutil.Process(gw.proc.pid).children():
        try:
            if any(kernel_id in word for word in child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    if required:
        raise RuntimeError(f"no process of kernel {kernel_id}")
    return 0


def _sample(gateway: psutil.Process, cycle: int) -> Sample:
    return Sample(cycle, gateway.memory_info().rss, gateway.num_fds())


def _quiet_sample(gw: Gateway, gateway: psutil.Process, cycle: int) -> Sample:
    """A sample once no kernel or partition is left (what is in flight is not growth)."""
    deadline = time.monotonic() + END_TIMEOUT_S
    while gw.get("/api/kernels").json() or gw.get("/api/cumulus/partitions").json():
        if time.monotonic() > deadline:
            break  # `leftovers` says what stayed
        time.sleep(0.2)
    time.sleep(1.0)  # the gateway's own clean-ups after the last reply (sockets, files)
    return _sample(gateway, cycle)


def leftovers(gw: Gateway, work: Path, kernel_ids: set[str]) -> dict[str, list[str]]:
    """Everything of the soak's kernels still there, by kind."""
    assert gw.proc is not None
    gateway = psutil.Process(gw.proc.pid)
    processes = [f"{p.pid} (the gateway's)" for p in gateway.children(recursive=True)]
    for proc in psutil.process_iter(["pid", "cmdline"]):
        words = " ".join(proc.info["cmdline"] or [])
        if proc.pid != gateway.pid and (str(work) in words or any(k in words for k in kernel_ids)):
            processes.append(f"{proc.pid} {words[:80]}")
    return {
        "kernels": [k["id"] for k in gw.get("/api/kernels").json()],
        "partitions": [p["id"] for p in gw.get("/api/cumulus/partitions").json()],
        "processes": sorted(set(processes)),
        "connection_files": sorted(p.name for p in gw.runtime_dir.glob("kernel-*.json")),
        "data_sockets": _listing(work / "sockets"),
        "kernel_dirs": _listing(work / "sandbox" / "kernels"),
        "cgroups": _cgroups(kernel_ids),
    }


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def _cgroups(kernel_ids: set[str]) -> list[str]:
    from gateway.sandbox import Cgroups

    found = Cgroups.find()
    if isinstance(found, str):
        return []
    return sorted(str(d) for k in kernel_ids for d in found.existing(k).dirs if d.exists())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--sandbox", choices=["bwrap", "none"], default="bwrap")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cumulus-soak-") as tmp:
        report = soak(args.cycles, args.parallel, Path(tmp), args.sandbox)
    print(report.summary())
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2))
    for line in report.problems():
        print(f"FAIL: {line}", file=sys.stderr)
    return 1 if report.problems() else 0


if __name__ == "__main__":
    raise SystemExit(main())
