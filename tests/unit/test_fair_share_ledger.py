"""The fair-share ledger survives the gateway: a broker built again over the same state file (as
a restarted gateway builds it) orders the queue by the use charged before, decayed over the time
in between; a partition handed out before the restart is charged when it ends after it; and a
partition made with Chronos directly is charged to its owner like the broker's own."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from chronos import GpuAmount, Store
from chronos.device import load_configured
from gateway.broker import PartitionBroker, PartitionRequest
from gateway.scheduler import FairShare, Rules

pytestmark = pytest.mark.unit

DEVICE = json.dumps([{"name": "H100", "vendor": "nvidia", "memory_bytes": 80 * 2**30}])


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def gateway(path: Path, clock: Clock) -> PartitionBroker:
    """The broker a gateway builds over the state file at ``path``."""
    return PartitionBroker(Store(load_configured(DEVICE), path, clock=clock), rules=Rules())


def ask(amount: str, owner: str) -> PartitionRequest:
    return PartitionRequest.parse(amount, "10m", owner=owner, devices=None)


async def queue_order(broker: PartitionBroker, clock: Clock) -> list[str]:
    """The order in which heavy's and light's requests (heavy's first) wait behind a head."""
    holder = await broker.acquire(ask("1", "holder"))
    waits = []
    for owner in ("head", "heavy", "light"):
        clock.now += 1
        waits.append(asyncio.ensure_future(broker.acquire(ask("1", owner), timeout=60)))
        while broker.queue_length < len(waits):
            await asyncio.sleep(0)
    order = [w["owner"] for w in broker.queue()]
    for wait in waits:
        wait.cancel()
    await asyncio.gather(*waits, return_exceptions=True)
    broker.release(holder.id)
    return order


def test_a_restarted_gateway_orders_the_queue_by_the_use_charged_before(tmp_path: Path) -> None:
    clock, state = Clock(), tmp_path / "state.sqlite3"
    first = gateway(state, clock)

    async def use() -> None:
        used = await first.acquire(ask("0.9", "heavy"))
        clock.now += 600
        first.release(used.id)  # charged 0.9 x 600 GPU-seconds

    asyncio.run(use())
    first.close()
    clock.now += 3600  # down for an hour: one half-life
    again = gateway(state, clock)
    assert again.share.usage("heavy", clock.now) == pytest.approx(0.9 * 600 / 2)
    assert asyncio.run(queue_order(again, clock)) == ["head", "light", "heavy"]
    again.close()
    forgetful = gateway(tmp_path / "fresh.sqlite3", clock)  # without the ledger: arrival order
    assert asyncio.run(queue_order(forgetful, clock)) == ["head", "heavy", "light"]
    forgetful.close()


def test_a_partition_handed_out_before_a_restart_is_charged_when_it_ends(tmp_path: Path) -> None:
    clock, state = Clock(), tmp_path / "state.sqlite3"
    first = gateway(state, clock)
    held = asyncio.run(first.acquire(ask("0.5", "ana")))
    first.close()  # the gateway stops while ana holds it
    clock.now += 300  # of its 10 minutes
    again = gateway(state, clock)
    again.release(held.id)
    assert again.share.usage("ana", clock.now) == pytest.approx(0.5 * 300)
    again.close()
    third = gateway(state, clock)  # charged once: a later restart does not charge it again
    assert third.share.usage("ana", clock.now) == pytest.approx(0.5 * 300)
    third.close()


def test_a_partition_made_with_chronos_directly_is_charged_to_its_owner(tmp_path: Path) -> None:
    clock, state = Clock(), tmp_path / "state.sqlite3"
    broker = gateway(state, clock)
    cli = Store(load_configured(DEVICE), state, clock=clock)  # `chronos create`, another process
    made = cli.create(GpuAmount.parse("0.4"), 1800, owner="bob")
    broker.pump()  # the supervisor's tick sees it
    clock.now += 900
    cli.release(made.id, "done")
    broker.pump()
    assert broker.share.usage("bob", clock.now) == pytest.approx(0.4 * 900)
    cli.close()
    broker.close()


def test_fair_share_entries_round_trip() -> None:
    share = FairShare(3600.0)
    share.charge("ana", 100.0, at=50.0)
    copy = FairShare(3600.0)
    copy.restore("ana", *share.entry("ana"))
    assert copy.usage("ana", 3650.0) == pytest.approx(50.0)
    assert copy.entry("nobody") == (0.0, 0.0)
