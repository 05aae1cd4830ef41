"""The gateway's partition broker: Chronos partitions for kernels, with a FIFO wait queue, and
the gateway's one way into the Chronos store (every store call goes through here, inside
`gateway.errors.chronos_boundary`, so the rest of the gateway sees only Cumulus errors).

A request that fits is served at once. One that does not either fails at once (``wait=False``:
`ResourceExhausted`, 429 with ``Retry-After``) or joins the back of the queue and waits up to
its launch timeout (then `DeadlineExceeded`, 504). The queue is strict FIFO: the head is served
first, so a large request is never starved by a stream of small ones. It moves whenever a
partition is released here, and on every supervisor tick (to see releases and expiries made by
other processes sharing the Chronos store).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chronos import Device, GpuAmount, Partition, Store, parse_duration
from cumulus_jupyter.errors import DeadlineExceeded, PartitionExpired, ResourceExhausted
from gateway.errors import chronos_boundary


@dataclass
class PartitionRequest:
    """What a kernel asks for; validated on construction (`InvalidArgument` otherwise)."""

    amount: GpuAmount
    duration_s: int
    owner: str
    devices: str | None = None
    id: int = field(default_factory=itertools.count(1).__next__)
    queued_at: float = field(default_factory=time.monotonic)

    @classmethod
    def parse(
        cls, amount: str | float, duration: str | float | None, owner: str, devices: str | None
    ) -> PartitionRequest:
        with chronos_boundary():
            parsed = GpuAmount.parse(amount), parse_duration(duration)
        return cls(*parsed, owner, devices or None)


@dataclass
class _Waiter:
    request: PartitionRequest
    future: asyncio.Future[Partition]
    last_refusal: str = ""


class PartitionBroker:
    """Hands out partitions from a Chronos `Store` in FIFO order. Used from the event loop."""

    def __init__(
        self, store: Store, on_allocated: Callable[[float], None] = lambda seconds: None
    ) -> None:
        self._store = store
        self.on_allocated = on_allocated  # gets each allocation's latency, queueing included
        self._queue: list[_Waiter] = []

    # -- the store, read through the boundary ----------------------------------------------------

    @property
    def devices(self) -> list[Device]:
        return self._store.devices

    @property
    def path(self) -> Path:
        """The state file (the gateway's own tables live in it too)."""
        return self._store.path

    def get(self, partition_id: str) -> Partition:
        with chronos_boundary():
            return self._store.get(partition_id)

    def get_many(self, partition_ids: list[str]) -> dict[str, Partition]:
        """The partitions named, read in one transaction; by id."""
        with chronos_boundary():
            return self._store.get_many(partition_ids)

    def partitions(self) -> list[Partition]:
        """The active partitions."""
        with chronos_boundary():
            return self._store.partitions()

    def used(self) -> dict[int, int]:
        """Tenths in use, by device index."""
        with chronos_boundary():
            return self._store.used()

    def free(self) -> list[tuple[Device, float]]:
        """Each device with its free share (0-1)."""
        used = self.used()
        return [(d, (10 - used.get(d.index, 0)) / 10) for d in self.devices]

    def attach(self, partition_id: str, pid: int) -> None:
        """Record a kernel process as running in the partition (for the watchdog)."""
        with chronos_boundary():
            self._store.attach(partition_id, pid)

    def close(self) -> None:
        self._store.close()

    # -- the queue -------------------------------------------------------------------------------

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    def queue(self) -> list[dict[str, Any]]:
        """The waiting requests, head first, for ``/api/cumulus/queue``."""
        now = time.monotonic()
        return [
            {
                "position": position,
                "request_id": w.request.id,
                "owner": w.request.owner,
                "amount": w.request.amount.value,
                "waited_s": round(now - w.request.queued_at, 3),
                "waiting_for": w.last_refusal,
            }
            for position, w in enumerate(self._queue, start=1)
        ]

    async def acquire(
        self,
        request: PartitionRequest,
        *,
        wait: bool = True,
        timeout: float = 60.0,
        on_queued: Callable[[int, str], None] | None = None,
    ) -> Partition:
        """A partition for ``request``: at once, after waiting in the queue, or an error."""
        started = time.monotonic()
        if not self._queue:
            try:
                return self._created(request, started)
            except ResourceExhausted as exc:
                if not wait:
                    raise
                refusal = str(exc)
        else:
            if not wait:
                raise ResourceExhausted(
                    f"{len(self._queue)} request(s) are already waiting for a partition",
                    retry_after=10,
                )
            refusal = "requests ahead in the queue"
        waiter = _Waiter(request, asyncio.get_running_loop().create_future(), refusal)
        self._queue.append(waiter)
        if on_queued is not None:
            on_queued(len(self._queue), refusal)
        claimed = False
        try:
            partition = await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
            claimed = True
            return partition
        except TimeoutError:
            raise DeadlineExceeded(
                f"waited {timeout:g} s in the queue for {request.amount} GPU and none came free "
                f"({waiter.last_refusal})"
            ) from None
        finally:
            if waiter in self._queue:
                self._queue.remove(waiter)
            if not claimed:
                self._give_back(waiter)

    def _give_back(self, waiter: _Waiter) -> None:
        # the wait ended (timeout, cancellation) - possibly in the instant it was served
        if not waiter.future.done():
            waiter.future.cancel()
        elif not waiter.future.cancelled() and waiter.future.exception() is None:
            self.release(waiter.future.result().id, "unclaimed")

    def _created(self, request: PartitionRequest, started: float) -> Partition:
        with chronos_boundary():
            partition = self._store.create(
                request.amount, request.duration_s, devices=request.devices, owner=request.owner
            )
        self.on_allocated(time.monotonic() - started)
        return partition

    def pump(self) -> None:
        """Serve queued requests, head first, for as long as the head fits."""
        while self._queue:
            head = self._queue[0]
            if head.future.done():
                self._queue.pop(0)
                continue
            try:
                partition = self._created(head.request, head.request.queued_at)
            except ResourceExhausted as exc:
                head.last_refusal = str(exc)
                return
            self._queue.pop(0)
            head.future.set_result(partition)

    def release(self, partition_id: str, reason: str = "released") -> None:
        """Release a partition (already ended ones are fine) and let the queue move."""
        with contextlib.suppress(PartitionExpired), chronos_boundary():
            self._store.release(partition_id, reason)
        self.pump()
