"""The gateway's time, which steps of the system clock never move: `SteadyClock`, its "now"
for expiries, and `Ticker`, which runs its periodic work (the expiry supervisor, the culler).

Partitions end at wall-clock times (the store is shared with the ``chronos`` CLI and other
processes, so an expiry must be an absolute time). Compared with `time.time`, a forward step of
the system clock (an NTP correction after a suspend, a VM resumed, ``date -s``) would end every
partition early, and a backward step would keep them an hour past their end. The gateway reads
the wall clock once, when it starts, and counts on from there with `time.monotonic`, which no
step moves (NTP's gradual slewing moves both alike). A gateway started while the system clock
is wrong takes that wrong time as its origin: only steps during its run are absorbed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from tornado.ioloop import IOLoop

from cumulus_jupyter.errors import CumulusError


class SteadyClock:
    """Wall-clock seconds (as `time.time`), following `time.monotonic` since it was made."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall, self._monotonic = wall, monotonic
        self._origin = wall() - monotonic()

    def __call__(self) -> float:
        return self._origin + self._monotonic()

    def step(self) -> float:
        """How far the system clock has stepped from this one (seconds, + ahead, - behind)."""
        return self._wall() - self()


class Ticker:
    """Awaits ``tick()`` every ``interval_s`` seconds on the gateway's event loop, timed by
    asyncio's monotonic clock; a tick that raises is logged (a `CumulusError`, such as the
    state file locked, in one line) and the next one comes as usual.

    Not tornado's ``PeriodicCallback``: that schedules on ``IOLoop.time()``, which is
    `time.time`, so a backward step of the system clock by an hour stops it for an hour (the
    expiry supervisor would keep every partition that long past its end)."""

    def __init__(
        self, tick: Callable[[], Awaitable[None]], interval_s: float, log: logging.Logger
    ) -> None:
        self._tick, self.interval_s, self.log = tick, interval_s, log
        self._task: asyncio.Task[None] | None = None

    @property
    def _name(self) -> str:
        return str(getattr(self._tick, "__qualname__", self._tick))

    def start(self) -> None:
        """Begin ticking once the event loop runs (callable before it does)."""
        IOLoop.current().add_callback(self._begin)

    def _begin(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self._tick()
            except CumulusError as exc:  # the state file locked or full: said, tried again
                self.log.warning("%s: %s (next try in %g s)", self._name, exc, self.interval_s)
            except Exception:
                self.log.exception("%s failed", self._name)
            await asyncio.sleep(max(0.0, self.interval_s - (loop.time() - started)))
