"""The partition broker's queue against a real Chronos store (pinned 80 GiB devices) on a clock
the test moves: FIFO and head-of-line under ``fifo``; backfilling that never delays the head's
reservation; ``wait=False`` refused when it would; estimated starts; fair-share order from the
GPU-seconds charged when partitions end (released or expired); extending a partition only when
nobody queued waits longer; the launch timeout, a cancelled wait that was just served. Store
errors come out as Cumulus errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chronos import Partition, Store
from chronos.device import load_configured
from cumulus_jupyter.errors import (
    Conflict,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PartitionExpired,
    ResourceExhausted,
)
from gateway.broker import PartitionBroker, PartitionRequest
from gateway.scheduler import Policy, Rules

pytestmark = pytest.mark.unit


def devices(count: int) -> str:
    return json.dumps(
        [
            {"name": "H100", "vendor": "nvidia", "memory_bytes": 80 * 2**30, "uuid": f"GPU-{i}"}
            for i in range(count)
        ]
    )


class Clock:
    """The store's and the broker's "now", moved by the test."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


Make = Callable[..., PartitionBroker]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make(tmp_path: Path, clock: Clock) -> Iterator[Make]:
    made: list[PartitionBroker] = []

    def make(policy: Policy = Policy.FAIR, count: int = 1, **hooks: object) -> PartitionBroker:
        path = tmp_path / f"chronos-{len(made)}.sqlite3"
        store = Store(load_configured(devices(count)), path, clock=clock)
        made.append(PartitionBroker(store, rules=Rules(policy), **hooks))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for broker in made:
        broker.close()


@pytest.fixture
def broker(make: Make) -> PartitionBroker:
    return make()


def ask(amount: str, owner: str, duration: str = "1h") -> PartitionRequest:
    return PartitionRequest.parse(amount, duration, owner=owner, devices=None)


async def queued(broker: PartitionBroker, length: int) -> None:
    """Let the event loop run until ``length`` requests wait (no clock involved)."""
    while broker.queue_length < length:
        await asyncio.sleep(0)


def owners(broker: PartitionBroker) -> list[str]:
    return sorted(p.owner for p in broker.partitions())


def test_under_fifo_the_queue_is_fifo_and_a_release_moves_it(make: Make) -> None:
    broker = make(Policy.FIFO)

    async def run() -> list[str]:
        first = await broker.acquire(ask("0.6", "first"))
        served: list[str] = []

        async def wait_for(amount: str, owner: str) -> Partition:
            partition = await broker.acquire(ask(amount, owner), timeout=60)
            served.append(owner)
            return partition

        a = asyncio.ensure_future(wait_for("0.5", "a"))
        await queued(broker, 1)
        b = asyncio.ensure_future(wait_for("0.3", "b"))  # fits now, but "a" is ahead
        await queued(broker, 2)
        assert [w["owner"] for w in broker.queue()] == ["a", "b"]
        assert [w["position"] for w in broker.queue()] == [1, 2]
        assert owners(broker) == ["first"]
        broker.release(first.id)
        await asyncio.gather(a, b)
        assert broker.queue_length == 0
        return served

    assert asyncio.run(run()) == ["a", "b"]
    assert owners(broker) == ["a", "b"]


def test_under_fifo_the_head_blocks_smaller_requests_behind_it(make: Make) -> None:
    broker = make(Policy.FIFO)

    async def run() -> None:
        await broker.acquire(ask("0.6", "holder"))
        big = asyncio.ensure_future(broker.acquire(ask("0.5", "big"), timeout=60))
        await queued(broker, 1)
        small = asyncio.ensure_future(broker.acquire(ask("0.1", "small", "5m"), timeout=60))
        await queued(broker, 2)
        broker.pump()  # the small one would fit; the head does not, so nothing moves
        assert not small.done() and owners(broker) == ["holder"]
        [head, behind] = broker.queue()
        assert "no device has 0.5 free" in head["waiting_for"]
        assert "at the head of the queue" in behind["waiting_for"]
        big.cancel()
        await asyncio.gather(big, return_exceptions=True)
        broker.pump()
        assert (await small).owner == "small"

    asyncio.run(run())


@pytest.mark.parametrize("policy", [Policy.BACKFILL, Policy.FAIR])
def test_a_request_that_ends_before_the_heads_reservation_starts_now(
    make: Make, clock: Clock, policy: Policy
) -> None:
    broker = make(policy)

    async def run() -> None:
        holder = await broker.acquire(ask("0.5", "holder", "30m"))
        request = ask("0.6", "head")
        head = asyncio.ensure_future(broker.acquire(request, timeout=60))
        await queued(broker, 1)
        assert request.reserved_at == holder.expires_at
        long = asyncio.ensure_future(broker.acquire(ask("0.5", "long", "2h"), timeout=60))
        await queued(broker, 2)
        short = await broker.acquire(ask("0.3", "short", "20m"), timeout=60)  # backfilled
        assert short.expires_at <= request.reserved_at
        assert owners(broker) == ["holder", "short"] and not long.done()
        [first, second] = broker.queue()
        assert (first["owner"], first["eta_s"]) == ("head", 1800.0)
        assert second["owner"] == "long" and "would delay request" in second["waiting_for"]
        clock.now = holder.expires_at  # the holder expires: the head starts, on time
        broker.pump()
        assert (await head).created_at == request.reserved_at
        long.cancel()
        await asyncio.gather(long, return_exceptions=True)

    asyncio.run(run())


def test_the_heads_reservation_is_kept_on_its_request(make: Make, clock: Clock) -> None:
    broker = make(Policy.BACKFILL)

    async def run() -> None:
        holder = await broker.acquire(ask("0.6", "holder", "30m"))
        request = ask("0.5", "head")
        head = asyncio.ensure_future(broker.acquire(request, timeout=60))
        await queued(broker, 1)
        assert request.reserved_at == holder.expires_at
        clock.now += 600
        broker.release(holder.id)  # earlier than its expiry: the head starts earlier
        assert (await head).created_at == clock.now < request.reserved_at

    asyncio.run(run())


def test_no_wait_is_refused_at_once_with_retry_after(broker: PartitionBroker) -> None:
    async def run() -> None:
        await broker.acquire(ask("0.5", "holder"))
        with pytest.raises(ResourceExhausted, match=r"no device has 0\.6 free") as refused:
            await broker.acquire(ask("0.6", "now"), wait=False)
        assert refused.value.retry_after is not None and refused.value.retry_after > 0
        waiting = asyncio.ensure_future(broker.acquire(ask("0.6", "patient"), timeout=60))
        await queued(broker, 1)
        with pytest.raises(ResourceExhausted, match="would delay request") as behind:
            await broker.acquire(ask("0.5", "now", "2h"), wait=False)  # fits, delays the head
        assert behind.value.retry_after == 3600 + 3600  # after the head's hour
        assert broker.queue_length == 1
        served = await broker.acquire(ask("0.3", "now", "1h"), wait=False)  # delays no one
        assert served.owner == "now"
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)

    asyncio.run(run())


def test_under_fifo_no_wait_behind_others_is_refused(make: Make) -> None:
    broker = make(Policy.FIFO)

    async def run() -> None:
        await broker.acquire(ask("0.6", "holder"))
        waiting = asyncio.ensure_future(broker.acquire(ask("0.5", "patient"), timeout=60))
        await queued(broker, 1)
        with pytest.raises(ResourceExhausted, match="already waiting") as behind:
            await broker.acquire(ask("0.1", "now", "5m"), wait=False)
        assert behind.value.retry_after == 3600
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)

    asyncio.run(run())


def test_estimates_follow_the_expiries_and_the_queue_order(make: Make) -> None:
    broker = make(Policy.FIFO, count=2)

    async def run() -> None:
        await broker.acquire(ask("1", "a", "1h"))
        await broker.acquire(ask("1", "b", "2h"))
        tasks = [
            asyncio.ensure_future(broker.acquire(ask(amount, f"w{i}", "1h"), timeout=60))
            for i, amount in enumerate(["1", "2", "0.5"])
        ]
        await queued(broker, 3)
        etas = [(w["owner"], w["eta_s"]) for w in broker.queue()]
        # w0 takes gpu0 when a ends; w1 needs both: when b ends; w2 after w1's hour
        assert etas == [("w0", 3600.0), ("w1", 7200.0), ("w2", 10800.0)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())


def test_fair_share_counts_expiries_and_the_head_keeps_its_place(make: Make, clock: Clock) -> None:
    broker = make(Policy.FAIR)

    async def run() -> list[str]:
        heavy = await broker.acquire(ask("0.9", "heavy", "1h"))
        clock.now = heavy.expires_at + 1  # it expires: the pump sees it in the store
        broker.pump()
        assert broker.share.usage("heavy", clock.now) == pytest.approx(0.9 * 3600, rel=1e-3)
        holder = await broker.acquire(ask("1", "holder", "10m"))
        served: list[str] = []

        async def wait_for(owner: str) -> None:
            await broker.acquire(ask("0.6", owner, "10m"), timeout=60)
            served.append(owner)

        tasks = [asyncio.ensure_future(wait_for("heavy"))]  # queued first: the head
        await queued(broker, 1)
        clock.now += 1
        tasks.append(asyncio.ensure_future(wait_for("light")))  # lighter, but behind the head
        await queued(broker, 2)
        assert [w["owner"] for w in broker.queue()] == ["heavy", "light"]
        broker.release(holder.id)
        await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return served

    assert asyncio.run(run()) == ["heavy"]


def test_fair_share_orders_by_usage_behind_the_head(make: Make, clock: Clock) -> None:
    broker = make(Policy.FAIR)

    async def run() -> list[str]:
        used = await broker.acquire(ask("0.9", "heavy", "1h"))
        clock.now += 1800
        broker.release(used.id)  # charged 0.9 x 1800 GPU-seconds
        holder = await broker.acquire(ask("1", "holder", "10m"))
        head = asyncio.ensure_future(broker.acquire(ask("1", "head", "10m"), timeout=60))
        await queued(broker, 1)
        tasks = []
        for owner in ("heavy", "light"):  # heavy asks first
            clock.now += 1
            tasks.append(asyncio.ensure_future(broker.acquire(ask("1", owner, "10m"))))
            await queued(broker, len(tasks) + 1)
        order = [w["owner"] for w in broker.queue()]
        for task in [head, *tasks]:
            task.cancel()
        await asyncio.gather(head, *tasks, return_exceptions=True)
        broker.release(holder.id)
        return order

    assert asyncio.run(run()) == ["head", "light", "heavy"]


def test_a_partition_is_extended_when_nobody_waits_for_it(make: Make) -> None:
    broker = make(Policy.FAIR, count=2)

    async def run() -> None:
        mine = await broker.acquire(ask("0.5", "ana", "30m"))
        other = await broker.acquire(ask("1", "bo", "1h"))
        assert broker.extend(mine.id, 600).expires_at == mine.expires_at + 600  # nobody waits
        waiting = asyncio.ensure_future(broker.acquire(ask("1", "cy"), timeout=60))
        await queued(broker, 1)
        assert broker.queue()[0]["eta_s"] == 1800.0 + 600  # when ana's partition ends
        with pytest.raises(Conflict, match=r"request \d+ \(user cy, 1 GPU\) is reserved") as no:
            broker.extend(mine.id, 1800)
        assert no.value.status == 409 and "when this partition ends" in str(no.value)
        assert broker.get(mine.id).expires_at == mine.expires_at + 600  # unchanged
        assert broker.extend(other.id, 3600).expires_at == other.expires_at + 3600
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)

    asyncio.run(run())


def test_an_ended_or_unknown_partition_cannot_be_extended(
    broker: PartitionBroker, clock: Clock
) -> None:
    async def run() -> None:
        partition = await broker.acquire(ask("0.5", "ana", "2m"))
        clock.now = partition.expires_at + 1
        with pytest.raises(PartitionExpired, match="expired"):
            broker.extend(partition.id, 600)
        with pytest.raises(NotFound):
            broker.extend("p-000000000000", 600)

    asyncio.run(run())


def test_hooks_see_waits_and_holdings(make: Make, clock: Clock) -> None:
    waits: list[float] = []
    held: list[dict[str, float]] = []
    broker = make(Policy.FAIR, on_waited=waits.append, on_holdings=lambda h: held.append(dict(h)))

    async def run() -> None:
        holder = await broker.acquire(ask("0.6", "holder", "10m"))
        waiting = asyncio.ensure_future(broker.acquire(ask("0.5", "w"), timeout=60))
        await queued(broker, 1)
        clock.now += 90
        broker.release(holder.id)
        await waiting
        broker.pump()

    asyncio.run(run())
    assert waits == [0.0, 90.0]
    assert held[-1] == {"w": 0.5}


def test_a_wait_past_its_timeout_is_deadline_exceeded_and_leaves_the_queue(
    broker: PartitionBroker,
) -> None:
    async def run() -> None:
        await broker.acquire(ask("0.9", "holder"))
        with pytest.raises(DeadlineExceeded, match=r"in the queue for 0.2 GPU") as raised:
            await broker.acquire(ask("0.2", "late"), timeout=0.01)
        assert raised.value.status == 504 and raised.value.exit_code == 8
        assert broker.queue_length == 0

    asyncio.run(run())


def test_a_wait_cancelled_just_as_it_was_served_gives_the_partition_back(
    broker: PartitionBroker,
) -> None:
    async def run() -> None:
        holder = await broker.acquire(ask("0.6", "holder"))
        waiting = asyncio.ensure_future(broker.acquire(ask("0.5", "gone"), timeout=60))
        await queued(broker, 1)
        waiting.cancel()  # its client leaves ...
        broker.release(holder.id)  # ... in the instant the queue serves it
        assert owners(broker) == ["gone"]
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert owners(broker) == []

    asyncio.run(run())


def test_store_errors_come_out_as_cumulus_errors(broker: PartitionBroker) -> None:
    with pytest.raises(InvalidArgument, match=r"Invalid GPU amount: 2\.3"):
        ask("2.3", "x")
    with pytest.raises(NotFound):
        broker.get("p-nonexistent")
    with pytest.raises(InvalidArgument, match="gpu7"):
        asyncio.run(broker.acquire(PartitionRequest.parse("0.1", "1h", "x", "gpu7")))
    [(device, free)] = broker.free()
    assert device.uuid == "GPU-0" and free == 1.0


@pytest.mark.parametrize("policy", list(Policy))
def test_a_slice_of_the_lab_day_keeps_every_reservation(tmp_path: Path, policy: Policy) -> None:
    # the scheduling benchmark's replay, on its first 300 requests: the real broker and store
    from benchmarks import scheduling

    jobs = scheduling.trace(15)[:300]
    served = asyncio.run(scheduling.replay(jobs, policy, tmp_path / "day.sqlite3"))
    measured = scheduling.measure(served)
    assert len(served) == len(jobs) and measured["reached_head"] > 0
    assert measured["late_at_head"] == 0
