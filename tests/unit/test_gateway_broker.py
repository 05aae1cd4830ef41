"""The partition broker's queue against a real Chronos store (one pinned 80 GiB device): FIFO,
head-of-line, the launch timeout, no-wait refusals, a cancelled wait that was just served, and
a release that moves the queue. Store errors come out as Cumulus errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from chronos import Partition, Store
from chronos.device import load_configured
from cumulus_jupyter.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from gateway.broker import PartitionBroker, PartitionRequest

pytestmark = pytest.mark.unit

DEVICE = [{"name": "H100", "vendor": "nvidia", "memory_bytes": 80 * 2**30, "uuid": "GPU-0"}]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PartitionBroker]:
    store = Store(load_configured(json.dumps(DEVICE)), tmp_path / "chronos.sqlite3")
    broker = PartitionBroker(store)
    try:
        yield broker
    finally:
        broker.close()


def ask(amount: str, owner: str) -> PartitionRequest:
    return PartitionRequest.parse(amount, "1h", owner=owner, devices=None)


async def queued(broker: PartitionBroker, length: int) -> None:
    """Let the event loop run until ``length`` requests wait (no clock involved)."""
    while broker.queue_length < length:
        await asyncio.sleep(0)


def owners(broker: PartitionBroker) -> list[str]:
    return sorted(p.owner for p in broker.partitions())


def test_the_queue_is_fifo_and_a_release_moves_it(broker: PartitionBroker) -> None:
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


def test_the_head_of_the_queue_blocks_smaller_requests_behind_it(broker: PartitionBroker) -> None:
    async def run() -> None:
        await broker.acquire(ask("0.6", "holder"))
        big = asyncio.ensure_future(broker.acquire(ask("0.5", "big"), timeout=60))
        await queued(broker, 1)
        small = asyncio.ensure_future(broker.acquire(ask("0.1", "small"), timeout=60))
        await queued(broker, 2)
        broker.pump()  # the small one would fit; the head does not, so nothing moves
        assert not small.done() and owners(broker) == ["holder"]
        assert "no device has 0.5 free" in broker.queue()[0]["waiting_for"]
        big.cancel()
        await asyncio.gather(big, return_exceptions=True)
        broker.pump()
        assert (await small).owner == "small"

    asyncio.run(run())


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


def test_no_wait_is_refused_at_once_with_retry_after(broker: PartitionBroker) -> None:
    async def run() -> None:
        await broker.acquire(ask("0.6", "holder"))
        with pytest.raises(ResourceExhausted, match=r"no device has 0\.5 free") as refused:
            await broker.acquire(ask("0.5", "now"), wait=False)
        assert refused.value.retry_after is not None and refused.value.retry_after > 0
        waiting = asyncio.ensure_future(broker.acquire(ask("0.5", "patient"), timeout=60))
        await queued(broker, 1)
        with pytest.raises(ResourceExhausted, match="already waiting") as behind:
            await broker.acquire(ask("0.1", "now"), wait=False)  # would fit, but others wait
        assert behind.value.retry_after == 10
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)

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
    [(device, free)] = broker.free()
    assert device.uuid == "GPU-0" and free == 1.0
