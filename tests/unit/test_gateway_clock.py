"""`gateway.clock` and `gateway.adoption`, each on its own: the steady clock ignores steps of the
wall clock it is given, the ticker keeps ticking past a tick that fails, and an adopted kernel's notice is
given once per client session."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from cumulus_jupyter.errors import Unavailable
from gateway.adoption import EVENT, Adoptions
from gateway.clock import SteadyClock, Ticker

pytestmark = pytest.mark.unit


class Clocks:
    """A wall clock and a monotonic one that the test moves."""

    def __init__(self) -> None:
        self.wall, self.mono = 1_000_000.0, 50.0

    def step(self, seconds: float) -> None:
        self.wall += seconds

    def run(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def test_the_steady_clock_follows_elapsed_time_and_not_steps() -> None:
    clocks = Clocks()
    clock = SteadyClock(lambda: clocks.wall, lambda: clocks.mono)
    assert clock() == clocks.wall
    clocks.run(10)
    assert clock() == 1_000_010.0
    clocks.step(+3600)
    assert clock() == 1_000_010.0 and clock.step() == 3600
    clocks.step(-7200)
    clocks.run(5)
    assert clock() == 1_000_015.0 and clock.step() == -3600


def test_the_ticker_ticks_on_and_survives_a_failing_tick() -> None:
    ticks: list[float] = []

    async def tick() -> None:
        ticks.append(time.monotonic())
        if len(ticks) == 2:
            raise Unavailable("state file locked")

    async def go() -> None:
        ticker = Ticker(tick, 0.01, logging.getLogger("test"))
        ticker.start()
        while len(ticks) < 5:
            await asyncio.sleep(0.01)
        ticker.stop()

    asyncio.run(go())
    assert len(ticks) >= 5


def test_an_adopted_kernel_is_explained_once_per_client_session() -> None:
    adoptions = Adoptions()
    assert adoptions.notice("k1", "s1") is None  # not adopted
    adoptions.mark("k1", at=0.0)
    notice = adoptions.notice("k1", "s1")
    assert notice is not None and notice["event"] == EVENT
    assert "00:00:00 UTC" in notice["message"] and "is lost" in notice["message"]
    assert adoptions.notice("k1", "s1") is None
    assert adoptions.notice("k1", "s2") is not None
    adoptions.forget("k1")
    assert adoptions.notice("k1", "s3") is None
