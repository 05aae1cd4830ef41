"""The gateway's partition broker: Chronos partitions for kernels, with a wait queue served by a
scheduling policy, and the gateway's one way into the Chronos store (every store call goes
through here, inside `gateway.errors.chronos_boundary`, so the rest of the gateway sees only
Cumulus errors).

A request that fits is served at once when nobody waits. Otherwise it joins the queue, and
`gateway.scheduler` decides who starts (``fifo``, ``backfill`` or ``fair``; see there): the head
of the queue gets a reservation from the held partitions' expiries, and a request behind it
starts now only if it fits now and the head still starts by its reservation. A request that
asked not to wait (``wait=False``) and is not started by that rule fails at once
(`ResourceExhausted`, 429, ``Retry-After`` its estimated start when known); one that waits gives
up after its launch timeout (`DeadlineExceeded`, 504). The queue moves whenever a partition is
released here, and on every supervisor tick (to see releases and expiries made by other
processes sharing the Chronos store). The broker's clock is the store's, so a simulated clock
(the scheduling benchmark's) drives both.

A partition is extended (`extend`) only when no queued request's estimated start moves later
(else `Conflict`, 409). When a partition on this node ends, however it ends, its owner is
charged ``amount x seconds held`` in the fair-share ledger (`FairShare`, kept in the state
file by `gateway.ledger`, so a restarted gateway orders the queue as before): one this broker
handed out, or one made with Chronos directly (``chronos create``) and seen active at a pump.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chronos import Device, GpuAmount, Partition, Store, format_duration, parse_duration
from cumulus_jupyter.errors import (
    Conflict,
    DeadlineExceeded,
    PartitionExpired,
    ResourceExhausted,
)
from gateway import scheduler
from gateway.errors import chronos_boundary
from gateway.ledger import FairShareLedger
from gateway.scheduler import Ask, Cluster, FairShare, Holding, Plan, Rules

_REPLANS = 3  # plans per pump when the store places a request other than planned


@dataclass
class PartitionRequest:
    """What a kernel asks for; validated on construction (`InvalidArgument` otherwise).
    ``reserved_at`` is set by the broker: the reservation it got on reaching the queue's head."""

    amount: GpuAmount
    duration_s: int
    owner: str
    devices: str | None = None
    id: int = field(default_factory=itertools.count(1).__next__)
    reserved_at: float | None = None
    tag: str | None = None  # the client's name for its request (``KERNEL_REQUEST_TAG``)

    @classmethod
    def parse(
        cls, amount: str | float, duration: str | float | None, owner: str, devices: str | None
    ) -> PartitionRequest:
        with chronos_boundary():
            parsed = GpuAmount.parse(amount), parse_duration(duration)
        return cls(*parsed, owner, devices or None)


@dataclass(eq=False)
class _Waiter:
    request: PartitionRequest
    future: asyncio.Future[Partition]
    candidates: tuple[int, ...]
    queued_at: float  # the broker's clock
    started: float  # time.monotonic(), for the allocation latency
    last_refusal: str = ""

    @functools.cached_property
    def ask(self) -> Ask:
        """The request as the scheduler sees it."""
        r = self.request
        return Ask(r.id, r.amount, r.duration_s, r.owner, self.candidates, self.queued_at)

    def follow(self, candidates: tuple[int, ...]) -> None:
        """Devices were found since the request came: "any device" means them too."""
        if candidates != self.candidates:
            self.candidates = candidates
            self.__dict__.pop("ask", None)  # the cached `ask`

    def ask_on(self, offline: frozenset[int]) -> Ask:
        """`ask`, without the ``offline`` devices: none is planned, or reserved, on one."""
        if not offline.intersection(self.candidates):
            return self.ask
        online = tuple(i for i in self.candidates if i not in offline)
        return dataclasses.replace(self.ask, candidates=online)


class PartitionBroker:
    """Hands out partitions from a Chronos `Store` under ``rules``. Used from the event loop.

    The hooks are for metrics: ``on_allocated`` gets each allocation's latency (queueing
    included), ``on_waited`` each served request's time in the queue (0 when served at once),
    ``on_holdings`` the GPUs held by each owner, at every pump.
    """

    def __init__(
        self,
        store: Store,
        on_allocated: Callable[[float], None] = lambda seconds: None,
        *,
        rules: Rules | None = None,
        on_waited: Callable[[float], None] = lambda seconds: None,
        on_holdings: Callable[[Mapping[str, float]], None] = lambda held: None,
    ) -> None:
        self._store = store
        self.rules = rules or Rules()
        self.share = FairShare(self.rules.half_life_s)
        self.on_allocated = on_allocated
        self.on_waited = on_waited
        self.on_holdings = on_holdings
        self._queue: list[_Waiter] = []
        self._head: int | None = None  # the request holding the reservation
        # every partition on this node seen active (handed out here or made with Chronos
        # directly) and not yet charged; kept in the ledger across restarts
        self._uncharged: dict[str, Partition] = {}
        self._active: dict[str, Partition] = {}  # on this node, at the last read
        self._device_count = len(store.devices)  # devices are only ever appended
        self._ledger = FairShareLedger(store.path)
        self._restore_ledger()

    def _restore_ledger(self) -> None:
        """Each owner's use, and the partitions to charge, as the last gateway left them."""
        pending = self._ledger.load(self.share)
        if not pending:
            return
        with chronos_boundary():
            known = self._store.get_many(pending)
        self._uncharged.update(known)
        self._ledger.forget(p for p in pending if p not in known)

    # -- the store, read through the boundary ----------------------------------------------------

    @property
    def devices(self) -> list[Device]:
        """Every device known, by index (offline ones too: partitions may be on them)."""
        return self._store.devices

    # -- devices found or lost while running (`gateway.discovery`): read afresh each time ----

    @property
    def _cluster(self) -> Cluster:
        devices = self._store.devices
        hosts = {d.index: d.host for d in devices if d.host}
        return Cluster(tuple(d.index for d in devices), hosts or None)

    def is_online(self, index: int) -> bool:
        """Whether the last device discovery found device ``index``."""
        return self._store.is_online(index)

    def _asks(self, waiters: list[_Waiter]) -> list[Ask]:
        if len(self._store.devices) != self._device_count:
            self._device_count = len(self._store.devices)
            with chronos_boundary():
                for w in self._queue:
                    w.follow(tuple(self._store.candidates(w.request.devices)))
        offline = self._store.offline
        return [w.ask_on(offline) for w in waiters]

    @property
    def path(self) -> Path:
        """The state file (the gateway's own tables live in it too)."""
        return self._store.path

    def clock(self) -> float:
        """Now, as the store counts it (expiries are on this clock)."""
        return self._store.clock()

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
        """Tenths in use, by device index, from the active partitions: a read, so another
        process holding the state file's write lock does not hold it up (the expiry
        supervisor asks every tick, for the metrics)."""
        used: dict[int, int] = {}
        for held in self._holdings():
            for device in held.devices:
                used[device] = used.get(device, 0) + held.tenths
        return used

    def free(self) -> list[tuple[Device, float]]:
        """Each device with its free share (0-1)."""
        used = self.used()
        return [(d, (10 - used.get(d.index, 0)) / 10) for d in self.devices]

    def attach(self, partition_id: str, pid: int) -> None:
        """Record a kernel process as running in the partition (for the watchdog)."""
        with chronos_boundary():
            self._store.attach(partition_id, pid)

    def use_clock(self, clock: Callable[[], float]) -> None:
        """Count "now" on ``clock`` from here on (expiries, reaping, queue waits; the store's
        too): the expiry supervisor's `gateway.clock.SteadyClock`."""
        self._store.clock = clock

    def close(self) -> None:
        self._ledger.close()
        self._store.close()

    # -- the queue -------------------------------------------------------------------------------

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    def queue(self) -> list[dict[str, Any]]:
        """The waiting requests in the order they are served, for ``/api/cumulus/queue``;
        ``eta_s`` is each one's estimated start in seconds from now (None: unknown)."""
        now = self.clock()
        holdings = self._holdings()
        ordered = self._ordered(holdings, now)
        etas = self._estimate(holdings, ordered, now)
        return [
            {
                "position": position,
                "request_id": w.request.id,
                "owner": w.request.owner,
                "amount": w.request.amount.value,
                "waited_s": round(now - w.queued_at, 3),
                "waiting_for": w.last_refusal,
                "eta_s": _rounded(etas.get(w.request.id)),
                "tag": w.request.tag,
            }
            for position, w in enumerate(ordered, start=1)
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
        with chronos_boundary():
            candidates = tuple(self._store.candidates(request.devices))
        future: asyncio.Future[Partition] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(request, future, candidates, self.clock(), time.monotonic())
        if not self._queue:
            try:
                return self._created(waiter)
            except ResourceExhausted as exc:
                if not wait:
                    raise
                waiter.last_refusal = str(exc)
        self._queue.append(waiter)
        try:
            self.pump()  # others wait: the policy says whether it may start now
        except BaseException:  # the store failed under it: it does not stay queued
            self._leave(waiter)
            with contextlib.suppress(Exception):
                self._give_back(waiter)
            raise
        if future.done():
            return future.result()
        if not wait:
            refusal = self._refused(waiter)
            self._leave(waiter)
            raise refusal
        if on_queued is not None:
            on_queued(self._position(waiter), waiter.last_refusal)
        return await self._waited(waiter, timeout)

    async def _waited(self, waiter: _Waiter, timeout: float) -> Partition:
        claimed = False
        try:
            partition = await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
            claimed = True
            return partition
        except TimeoutError:
            raise DeadlineExceeded(
                f"waited {timeout:g} s in the queue for {waiter.request.amount} GPU and none "
                f"came free ({waiter.last_refusal})"
            ) from None
        finally:
            self._leave(waiter)
            if not claimed:
                self._give_back(waiter)

    def _leave(self, waiter: _Waiter) -> None:
        if waiter in self._queue:
            self._queue.remove(waiter)
        if waiter.request.id == self._head:
            self._head = None

    def _refused(self, waiter: _Waiter) -> ResourceExhausted:
        """Why a request that may not wait is not started now, with its estimated start."""
        now = self.clock()
        holdings = self._holdings()
        ordered = self._ordered(holdings, now)
        eta = self._estimate(holdings, ordered, now)
        retry = eta.get(waiter.request.id)
        return ResourceExhausted(
            f"{len(self._queue) - 1} request(s) are already waiting for a partition and this one "
            f"may not start before them: {waiter.last_refusal}",
            retry_after=max(1.0, round(retry)) if retry is not None else 10,
        )

    def _position(self, waiter: _Waiter) -> int:
        ordered = self._ordered(self._holdings(), self.clock())
        return ordered.index(waiter) + 1 if waiter in ordered else len(ordered)

    def _give_back(self, waiter: _Waiter) -> None:
        # the wait ended (timeout, cancellation) - possibly in the instant it was served
        if not waiter.future.done():
            waiter.future.cancel()
        elif not waiter.future.cancelled() and waiter.future.exception() is None:
            self.release(waiter.future.result().id, "unclaimed")

    def _created(self, waiter: _Waiter, devices: tuple[int, ...] | None = None) -> Partition:
        """The partition for ``waiter``'s request, on the ``devices`` planned for it (None:
        wherever the store puts it among those the request names)."""
        request = waiter.request
        on = ",".join(str(i) for i in devices) if devices else request.devices
        with chronos_boundary():
            partition = self._store.create(
                request.amount, request.duration_s, devices=on, owner=request.owner
            )
        self._expect(partition)
        self.on_allocated(time.monotonic() - waiter.started)
        self.on_waited(max(0.0, self.clock() - waiter.queued_at))
        return partition

    def pump(self) -> None:
        """Serve queued requests as the policy says; see who the head is and its reservation;
        charge the owners of partitions handed out here that have ended since."""
        self._queue = [w for w in self._queue if not w.future.done()]
        holdings = self._holdings()
        self._adopt()
        self._charge_ended({h.partition_id for h in holdings})
        self.on_holdings(_held_by_owner(holdings))
        for _ in range(_REPLANS):
            if not self._queue:
                self._head = None
                return
            plan = self._plan(holdings)
            if self._serve(plan):
                return
            holdings = self._holdings()

    def _plan(self, holdings: list[_Held]) -> Plan:
        asks = self._asks(self._queue)
        plan = scheduler.plan(
            self._cluster, holdings, asks, self.clock(), self.rules,
            share=self.share, head=self._head,
        )  # fmt: skip
        for w in self._queue:
            if w.request.id in plan.waiting_for:
                w.last_refusal = plan.waiting_for[w.request.id]
        return plan

    def _serve(self, plan: Plan) -> bool:
        """Start what ``plan`` says; False when the store placed one other than planned (another
        process changed what is held), so the rest must be planned again."""
        by_id = {w.request.id: w for w in self._queue}
        for start in plan.starts:
            waiter = by_id[start.id]
            try:
                partition = self._created(waiter, start.devices)
            except ResourceExhausted as exc:
                waiter.last_refusal = str(exc)
                return False
            self._queue.remove(waiter)
            waiter.future.set_result(partition)
            if partition.devices != start.devices:
                return False
        if plan.head != self._head and plan.head is not None:
            by_id[plan.head].request.reserved_at = plan.reserved_at
        self._head = plan.head
        return True

    def _ordered(self, holdings: list[_Held], now: float) -> list[_Waiter]:
        by_id = {w.request.id: w for w in self._queue}
        usage = scheduler.usage_of(holdings, self.share, now)
        asks = self._asks(self._queue)
        return [
            by_id[a.id]
            for a in scheduler.order(
                asks, self.rules, now, usage=usage, head=self._head, holdings=holdings
            )
        ]

    def _estimate(
        self, holdings: list[_Held], ordered: list[_Waiter], now: float
    ) -> dict[int, float | None]:
        asks = self._asks(ordered)
        fifo = self.rules.policy is scheduler.Policy.FIFO
        return scheduler.estimate(self._cluster, holdings, asks, now, in_order=fifo)

    def _holdings(self) -> list[_Held]:
        with chronos_boundary():
            active = self._store.partitions()
        node = self._store.node
        here = [p for p in active if p.node == node]
        self._active = {p.id: p for p in here}
        return [_Held.of(p) for p in here]

    def _adopt(self) -> None:
        """Charge partitions made with Chronos directly (``chronos create``) like ours: seen
        active here at a pump, they are charged to their owner when they end. (A read like
        `used` writes nothing: another process may hold the state file's write lock.)"""
        for p in self._active.values():
            if p.id not in self._uncharged:
                self._expect(p)

    def _expect(self, partition: Partition) -> None:
        self._uncharged[partition.id] = partition
        self._ledger.expect(partition.id)

    def _charge_ended(self, active: set[str]) -> None:
        ended = [pid for pid in self._uncharged if pid not in active]
        if not ended:
            return
        with chronos_boundary():
            current = self._store.get_many(ended)
        for pid in ended:
            self._charge(current.get(pid, self._uncharged[pid]))

    def _charge(self, partition: Partition) -> None:
        self._uncharged.pop(partition.id, None)
        until = min(partition.ended_at or partition.expires_at, partition.expires_at)
        held = max(0.0, until - partition.created_at)
        gpu_seconds = partition.amount.value * held
        self._ledger.charge(self.share, partition.owner, gpu_seconds, until, partition.id)

    # -- ending and extending --------------------------------------------------------------------

    def release(self, partition_id: str, reason: str = "released") -> None:
        """Release a partition (already ended ones are fine) and let the queue move."""
        with contextlib.suppress(PartitionExpired), chronos_boundary():
            ended = self._store.release(partition_id, reason)
            if ended.id in self._uncharged:
                self._charge(ended)
        self.pump()

    def extend(self, partition_id: str, seconds: float) -> Partition:
        """Move an active partition's expiry ``seconds`` later, unless that would make any
        queued request start later than now estimated (`Conflict`). `PartitionExpired`,
        `NotFound` and `InvalidArgument` as the store says."""
        current = self.get(partition_id)
        if current.is_active and self._queue:
            self._check_delays_nobody(current, seconds)
        with chronos_boundary():
            extended = self._store.extend(partition_id, seconds)
        if extended.id in self._uncharged:
            self._uncharged[extended.id] = extended
        return extended

    def _check_delays_nobody(self, partition: Partition, seconds: float) -> None:
        now = self.clock()
        holdings = self._holdings()
        ordered = self._ordered(holdings, now)
        before = self._estimate(holdings, ordered, now)
        longer = [h.extended(seconds) if h.partition_id == partition.id else h for h in holdings]
        after = self._estimate(longer, ordered, now)
        for w in ordered:
            was, will = before.get(w.request.id), after.get(w.request.id)
            if was is not None and (will is None or will > was + 1e-6):
                r = w.request
                raise Conflict(
                    f"Cannot extend {partition.id} by {format_duration(seconds)}: request "
                    f"{r.id} (user {r.owner}, {r.amount} GPU) is reserved to start in "
                    f"{format_duration(was)}, when this partition ends, and would have to wait "
                    f"{'longer' if will is None else format_duration(will - was) + ' longer'}. "
                    "Save your work and start again later, or ask when the queue is shorter."
                )


@dataclass(frozen=True)
class _Held(Holding):
    """A held partition as the scheduler sees it, with its id."""

    partition_id: str = ""

    @classmethod
    def of(cls, p: Partition) -> _Held:
        return cls(p.devices, p.amount.tenths_per_device, p.expires_at, p.owner, p.created_at, p.id)

    def extended(self, seconds: float) -> _Held:
        return _Held(
            self.devices, self.tenths, self.until + seconds, self.owner, self.since,
            self.partition_id,
        )  # fmt: skip


def _held_by_owner(holdings: list[_Held]) -> dict[str, float]:
    held: dict[str, float] = {}
    for h in holdings:
        held[h.owner] = held.get(h.owner, 0.0) + len(h.devices) * h.tenths / 10
    return held


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)
