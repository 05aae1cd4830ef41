"""One table of ratios from the benchmarks' JSON files (``make bench`` writes them to .bench/),
and the same as ``report.json`` plus a PNG chart.

    python benchmarks/report.py [--dir .bench]

Each row: what is measured, our figure, the anchor's figure measured in the same run, ours /
anchor, and the bound the issues set on it (times: at most; rates: at least). The chart shows
how many times better ours is, with the target as a black tick.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Row:
    name: str
    ours: float
    anchor: float
    unit: str
    lower_is_better: bool  # times: lower is better; rates: higher
    target: float | None  # the bound the issue sets on ours / anchor

    @property
    def ratio(self) -> float:
        return self.ours / self.anchor

    @property
    def advantage(self) -> float:
        """How many times better ours is than the anchor."""
        return 1 / self.ratio if self.lower_is_better else self.ratio

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.ratio <= self.target if self.lower_is_better else self.ratio >= self.target


def _load(directory: Path, name: str) -> Any:
    path = directory / name
    return json.loads(path.read_text()) if path.exists() else None


def rows(directory: Path) -> list[Row]:
    out: list[Row] = []
    relay = _load(directory, "relay.json")
    if relay:
        direct = relay["direct jupyter_client"]["median_ms"]
        for name, bound in (
            ("cumulus gateway", 1.25),
            ("Cumulus GPU kernel (proxy)", 1.5),
            ("%%cumulus cell (warm session)", None),  # judged taken in turns (below)
            ("%%cumulus cell pushing 100 KiB", None),
        ):
            if name in relay:
                ours = relay[name]["median_ms"]
                out.append(Row(f"round trip: {name} vs direct", ours, direct, "ms", True, bound))
        if "Enterprise Gateway 3.3" in relay:
            ours = relay["cumulus gateway"]["median_ms"]
            eg = relay["Enterprise Gateway 3.3"]["median_ms"]
            out.append(Row("round trip: gateway vs Enterprise Gateway 3.3", ours, eg, "ms", True,
                           1 / 5))  # fmt: skip
            cold = relay["cumulus gateway"]["cold_start_s"]
            eg_cold = relay["Enterprise Gateway 3.3"]["cold_start_s"]
            out.append(Row("cold start: gateway vs Enterprise Gateway 3.3", cold, eg_cold, "s",
                           True, None))  # fmt: skip
            docker = relay.get("cumulus gateway, docker runtime")
            if docker:
                out.append(Row("cold start: docker runtime vs Enterprise Gateway 3.3",
                               docker["cold_start_s"], eg_cold, "s", True, None))  # fmt: skip
        docker = relay.get("cumulus gateway, docker runtime")
        if docker:
            plain = relay["direct jupyter_client"]["cold_start_s"]
            out.append(Row("cold start: docker runtime vs plain ipykernel", docker["cold_start_s"],
                           plain, "s", True, None))  # fmt: skip
            out.append(Row("round trip: docker runtime vs direct", docker["median_ms"], direct,
                           "ms", True, 1.25))  # fmt: skip
    out += _in_turns(_load(directory, "relay_in_turns.json"))
    for r in _load(directory, "transfer.json") or []:
        size = r["MiB"]
        for way in ("push", "pull"):
            ours, raw = r[f"{way}_MiB_s"], r["raw_zmq_MiB_s"]
            target = 0.7 if size == 256 else None
            out.append(Row(f"{size} MiB {way} vs raw zmq+pickle5", ours, raw, "MiB/s", False,
                           target))  # fmt: skip
            ipp = r.get(f"ipyparallel_{way}_MiB_s")
            if ipp:
                out.append(Row(f"{size} MiB {way} vs ipyparallel", ours, ipp, "MiB/s", False,
                               3.0 if size == 256 else None))  # fmt: skip
    many = _load(directory, "concurrency.json")
    if many:
        for q in ("p50", "p99"):
            out.append(Row(f"round trip {q}, {many['kernels']} kernels at once: gateway vs direct",
                           many[f"gateway_{q}_ms"], many[f"direct_{q}_ms"], "ms", True,
                           None))  # fmt: skip
    chronos = _load(directory, "chronos.json")
    if chronos:
        mine, target = chronos["chronos_pairs_per_s"], chronos["target_pairs_per_s"]
        out.append(Row("Chronos create+release/s vs target", mine, target, "/s", False,
                       1.0))  # fmt: skip
    out += _scheduling(_load(directory, "scheduling.json"))
    return out


#: `relay_in_turns`' kinds, what each is, and issue 14's bound on it against direct
_IN_TURNS = (
    ("gateway", "gateway WebSocket", 1.25),
    ("pass", "%%cumulus cell running pass", 1.25),
    ("push", "%%cumulus cell pushing 100 KiB", 1.4),
)


def _in_turns(data: Any) -> list[Row]:
    """The round trips taken in turns with direct ones: the same load for every kind (the
    bounds of issue 14 on ``%%cumulus`` cells are judged on these)."""
    if not data:
        return []
    direct = data["direct"]["median_ms"]
    return [
        Row(f"round trip, in turns: {what} vs direct", data[kind]["median_ms"], direct, "ms",
            True, bound)
        for kind, what, bound in _IN_TURNS if kind in data
    ]  # fmt: skip


def _scheduling(data: Any) -> list[Row]:
    """Backfill's utilization against fifo's, fair's fairness against fifo's (issue 15)."""
    if not data:
        return []
    fifo, backfill, fair = (data["results"][p] for p in ("fifo", "backfill", "fair"))
    return [
        Row("device utilization while requests wait: backfill vs fifo",
            100 * backfill["utilization_contended"], 100 * fifo["utilization_contended"], "%",
            False, 1.15),
        Row("device utilization, whole replay: backfill vs fifo", 100 * backfill["utilization"],
            100 * fifo["utilization"], "%", False, 1.15),
        Row("Jain index of users' slowdown: fair vs fifo", fair["jain_slowdown"],
            fifo["jain_slowdown"], "", False, 1.0),
    ]  # fmt: skip


def print_table(table: list[Row]) -> None:
    width = max((len(r.name) for r in table), default=10)
    heads = ("ours", "anchor", "unit", "ours/anchor", "target", "")
    print(f"{'measured':<{width}}  " + "  ".join(f"{h:>11}" for h in heads))
    for r in table:
        target = "-" if r.target is None else f"{'<=' if r.lower_is_better else '>='}{r.target:g}x"
        mark = {None: "", True: "ok", False: "MISSED"}[r.met]
        cells = (f"{r.ours:,.2f}", f"{r.anchor:,.2f}", r.unit, f"{r.ratio:.2f}x", target, mark)
        print(f"{r.name:<{width}}  " + "  ".join(f"{c:>11}" for c in cells))


def chart(table: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.4 * len(table) + 1.2))
    names = [r.name for r in table][::-1]
    ratios = [r.advantage for r in table][::-1]
    colors = ["tab:red" if r.met is False else "tab:green" for r in table][::-1]
    ax.barh(names, ratios, color=colors)
    for i, r in enumerate(table[::-1]):
        if r.target:
            bound = 1 / r.target if r.lower_is_better else r.target
            ax.plot([bound, bound], [i - 0.4, i + 0.4], color="black", linewidth=2)
    ax.axvline(1.0, color="grey", linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("ours vs anchor (x, higher is better; black tick: target)")
    ax.set_title("Cumulus Jupyter vs its anchors, one run", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(".bench"))
    args = parser.parse_args()
    table = rows(args.dir)
    if not table:
        raise SystemExit(f"no benchmark results in {args.dir}: run `make bench`")
    print_table(table)
    report = [asdict(r) | {"ratio": r.ratio, "met": r.met} for r in table]
    (args.dir / "report.json").write_text(json.dumps(report, indent=2))
    chart(table, args.dir / "report.png")
    print(f"wrote {args.dir / 'report.json'} and {args.dir / 'report.png'}")


if __name__ == "__main__":
    main()
