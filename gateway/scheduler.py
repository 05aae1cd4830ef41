"""Which queued partition requests start now, when the others are expected to: a pure function
of the devices, the partitions held (with their known expiries), the queue and "now".

Three policies (`Policy`):

``fifo``
    The queue is served in arrival order and only its head may start: a request that does not
    fit blocks every one behind it.
``backfill``
    EASY backfilling (Lifka's rule, as in Slurm's and Maui's backfill). The queue is in arrival
    order; requests start from the head for as long as they fit. The first that does not becomes
    the *head* and gets a *reservation*: the earliest time at which it fits once the partitions
    held now end at their expiries (`Plan.reserved_at`). Every request behind it may start now
    if it fits now **and** the head still fits at its reservation with this request's partition
    added (it ends, at ``now + duration``, by the reservation, or it sits where the head will
    not). The check is made by the placement the store uses (`chronos.allocator.place`, best
    fit); when that spot would delay the head, the devices the head is to get are left out and
    the request placed among the others (the broker asks the store for the devices planned).
    No backfill can make the head start later than its reservation, so the head never starts
    later than it would under ``fifo``.

    The drain rule (`drain_first`): a request longer than what the rest needs to drain, the
    GPU-seconds queued besides it and held until their expiries spread over the devices it
    may use less its own amount, would end last whatever is served before it, with devices
    idle while it runs alone. Such a request moves up to just behind the head (the first in
    order that does not fit now), longest first (the LPT rule: starting the longest job first
    ends the backlog soonest), and so gets the next reservation. A request is seldom longer
    than a few hours, so this holds only once the backlog is down to about that: in the
    evening drain, or on a quiet day. The head keeps its place and its reservation.
``fair``
    ``backfill`` with the queue ordered by each owner's recent use: decayed GPU-seconds
    (`FairShare`, half-life configurable) plus what their held partitions have used so far, counted
    in seconds of the amount the request asks (GPU-seconds over its GPUs), lowest first, arrival
    order among equals, then the drain rule. Fair evens slowdown, which is time: a user of two GPUs
    is charged twice the GPU-seconds for each hour served, so by GPU-seconds alone their requests
    sink below those of users who have been served as long at their own size; counted at the size
    asked, each request is ranked by how long its owner has recently had as much. Two rules keep it
    from starving anyone: the head, once chosen, keeps its place until it starts or leaves (its
    reservation is honoured like under ``backfill``); and a request is *aged* once its slowdown so
    far, (wait + duration) / duration, reaches `AGED_SLOWDOWN` (it has waited four times its
    duration) or once it has waited ``aging_s`` (by default twice the half-life), whichever comes
    first: aged requests come before all others, in the order they were aged. Usage alone evens
    GPU-seconds, not waits: a user of five-minute requests who waits as long as a user of two-hour
    ones is far worse off; aging by slowdown serves short requests before they have waited out of
    all proportion to their length, and the plain bound keeps long ones moving. A request's wait is
    then bounded: once aged (at most ``aging_s`` after it arrived), only the requests aged before
    it, the current head and those the drain rule moves up (only while the rest of the queue, it
    included, drains within the longest partition duration) can be served ahead of it, and each head
    starts within the longest partition duration of becoming head.

Estimated starts (`estimate`) come from a conservative plan of the whole queue in policy order:
each request at the earliest time it fits, throughout its duration, around what is held and
what was planned for the requests ahead of it. A request that can never fit has no estimate.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from chronos.allocator import place
from chronos.amount import TENTHS_PER_DEVICE, GpuAmount
from chronos.errors import InvalidArgument, ResourceExhausted

DEFAULT_HALF_LIFE_S = 3_600.0
AGED_SLOWDOWN = 5.0  # under fair, a request that has waited 4x its duration is aged


class Policy(StrEnum):
    """How the queue is served (``--CumulusKernelManager.queue_policy``)."""

    FIFO = "fifo"
    BACKFILL = "backfill"
    FAIR = "fair"


@dataclass(frozen=True)
class Cluster:
    """The devices partitions go on: their indices and, when they span hosts, each one's host."""

    devices: tuple[int, ...]
    hosts: Mapping[int, str | None] | None = None


@dataclass(frozen=True)
class Holding:
    """A partition that holds ``tenths`` on each of ``devices`` from ``since`` to ``until``."""

    devices: tuple[int, ...]
    tenths: int
    until: float
    owner: str = ""
    since: float = 0.0


@dataclass(frozen=True)
class Ask:
    """A queued request: ``amount`` for ``duration_s`` on one of ``candidates``."""

    id: int
    amount: GpuAmount
    duration_s: float
    owner: str
    candidates: tuple[int, ...]
    queued_at: float


@dataclass(frozen=True)
class Start:
    """A request to start now, on the devices the store will give it."""

    id: int
    devices: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    """What `plan` decided: the queue in policy order, who starts now (in that order), the head
    that waits after them with its reservation, and why each other request waits."""

    order: tuple[int, ...]
    starts: tuple[Start, ...]
    head: int | None
    reserved_at: float | None
    waiting_for: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rules:
    """The policy and its parameters."""

    policy: Policy = Policy.FAIR
    half_life_s: float = DEFAULT_HALF_LIFE_S
    aging_s: float | None = None  # None: twice the half-life
    aged_slowdown: float = AGED_SLOWDOWN

    @property
    def aged_after_s(self) -> float:
        return 2 * self.half_life_s if self.aging_s is None else self.aging_s

    def aged_at(self, ask: Ask) -> float:
        """When ``ask`` is aged under ``fair``: once its slowdown so far, (wait + duration) /
        duration, reaches `aged_slowdown`, or once it has waited `aged_after_s`, whichever
        comes first."""
        by_slowdown = (self.aged_slowdown - 1) * ask.duration_s
        return ask.queued_at + min(self.aged_after_s, by_slowdown)


class FairShare:
    """Each owner's GPU-seconds, decayed with a half-life: what `fair` orders the queue by.

    Charges are made when a partition ends (``amount x seconds held``); `usage` decays them to
    "now". Pure bookkeeping: the caller says what time it is.
    """

    def __init__(self, half_life_s: float = DEFAULT_HALF_LIFE_S) -> None:
        if not half_life_s > 0 or not math.isfinite(half_life_s):
            raise InvalidArgument(f"the fair-share half-life must be positive, not {half_life_s}")
        self.half_life_s = half_life_s
        self._used: dict[str, tuple[float, float]] = {}  # owner -> (GPU-seconds, as of)

    def charge(self, owner: str, gpu_seconds: float, at: float) -> None:
        """Add ``gpu_seconds`` used by ``owner``, counted as of ``at`` (charges may come out of
        order: each is decayed from its own time)."""
        value, since = self._used.get(owner, (0.0, at))
        added = max(0.0, gpu_seconds)
        if at >= since:
            self._used[owner] = (self._decayed(value, at - since) + added, at)
        else:
            self._used[owner] = (value + self._decayed(added, since - at), since)

    def _decayed(self, value: float, seconds: float) -> float:
        return float(value * 0.5 ** (max(0.0, seconds) / self.half_life_s))

    def usage(self, owner: str, now: float) -> float:
        """``owner``'s decayed GPU-seconds at ``now``."""
        value, since = self._used.get(owner, (0.0, now))
        return self._decayed(value, now - since)

    def entry(self, owner: str) -> tuple[float, float]:
        """``owner``'s GPU-seconds as of the time they were last counted, and that time."""
        return self._used.get(owner, (0.0, 0.0))

    def restore(self, owner: str, gpu_seconds: float, as_of: float) -> None:
        """Set ``owner``'s use as an `entry` read back (a restarted gateway's ledger)."""
        self._used[owner] = (max(0.0, gpu_seconds), as_of)

    def snapshot(self, now: float) -> dict[str, float]:
        """Every owner's decayed GPU-seconds at ``now``."""
        return {owner: self.usage(owner, now) for owner in self._used}


# -- the timeline: what is held when ---------------------------------------------------------


@dataclass(frozen=True)
class _Span:
    devices: tuple[int, ...]
    tenths: int
    start: float
    end: float


class Timeline:
    """Partitions held and planned, as spans of time; answers "where would this fit, when"."""

    def __init__(self, cluster: Cluster, holdings: Iterable[Holding], now: float) -> None:
        self.cluster = cluster
        self.now = now
        self._spans = [_Span(h.devices, h.tenths, now, h.until) for h in holdings if h.until > now]

    def holdings(self) -> list[Holding]:
        """What is held and planned from now on, as holdings."""
        return [Holding(s.devices, s.tenths, s.end) for s in self._spans if s.end > self.now]

    def copy(self) -> Timeline:
        twin = Timeline(self.cluster, (), self.now)
        twin._spans = list(self._spans)
        return twin

    def add(self, devices: tuple[int, ...], tenths: int, start: float, end: float) -> None:
        self._spans.append(_Span(devices, tenths, start, end))

    def free_now(self) -> dict[int, int]:
        """The tenths free on each device now."""
        used: dict[int, int] = {}
        for s in self._spans:
            if s.start <= self.now < s.end:
                for d in s.devices:
                    used[d] = used.get(d, 0) + s.tenths
        return {d: TENTHS_PER_DEVICE - used.get(d, 0) for d in self.cluster.devices}

    def used_over(self, start: float, end: float) -> dict[int, int]:
        """The most tenths held on each device at any moment in ``[start, end)``."""
        live = [s for s in self._spans if s.start < end and s.end > start]
        moments = {start, *(s.start for s in live if s.start > start)}
        most: dict[int, int] = {}
        for moment in moments:
            here: dict[int, int] = {}
            for s in live:
                if s.start <= moment < s.end:
                    for d in s.devices:
                        here[d] = here.get(d, 0) + s.tenths
            for d, tenths in here.items():
                most[d] = max(most.get(d, 0), tenths)
        return most

    def fits(self, ask: Ask, start: float, avoid: Iterable[int] = ()) -> tuple[int, ...] | None:
        """The devices ``ask`` would get starting at ``start`` (for its whole duration), or
        None; ``avoid``: devices not to choose."""
        used = self.used_over(start, start + ask.duration_s)
        shunned = set(avoid)
        candidates = [i for i in ask.candidates if i not in shunned]
        try:
            return tuple(place(ask.amount, candidates, used, self.cluster.hosts))
        except (ResourceExhausted, InvalidArgument):
            return None

    def why_not(self, ask: Ask) -> str:
        """What the store would say about ``ask`` now."""
        try:
            used = self.used_over(self.now, self.now + ask.duration_s)
            place(ask.amount, ask.candidates, used, self.cluster.hosts)
        except (ResourceExhausted, InvalidArgument) as exc:
            return str(exc)
        return "fits now"

    def earliest(self, ask: Ask) -> tuple[float, tuple[int, ...]] | None:
        """The earliest time from now at which ``ask`` fits for its whole duration, with its
        devices; None if it never does (more than the candidates hold)."""
        moments = sorted({self.now, *(s.end for s in self._spans if s.end > self.now)})
        for moment in moments:
            devices = self.fits(ask, moment)
            if devices is not None:
                return moment, devices
        return None

    def reserve(self, ask: Ask, start: float, devices: tuple[int, ...]) -> None:
        self.add(devices, ask.amount.tenths_per_device, start, start + ask.duration_s)


# -- ordering ------------------------------------------------------------------------------------


def order(
    queue: Sequence[Ask],
    rules: Rules,
    now: float,
    *,
    usage: Mapping[str, float] | None = None,
    head: int | None = None,
    holdings: Sequence[Holding] = (),
) -> list[Ask]:
    """The queue in the order ``rules`` serve it; ``head`` (the request holding the reservation)
    stays first while it waits. ``usage`` is each owner's GPU-seconds, for `Policy.FAIR`;
    ``holdings``, the partitions held, for the drain rule (`drain_first`) behind ``head``."""
    arrival = sorted(queue, key=lambda a: (a.queued_at, a.id))
    kept = [a for a in arrival if a.id == head]
    rest = [a for a in arrival if a.id != head]
    if rules.policy is Policy.FAIR:
        used = usage or {}
        aged = [a for a in rest if now >= rules.aged_at(a)]
        aged.sort(key=lambda a: (rules.aged_at(a), a.queued_at, a.id))
        young = [a for a in rest if now < rules.aged_at(a)]
        young.sort(key=lambda a: (used.get(a.owner, 0.0) / a.amount.value, a.queued_at, a.id))
        rest = aged + young
    if kept and rules.policy is not Policy.FIFO:
        rest = drain_first(rest, [*kept, *rest], holdings, now)
    return kept + rest


def drain_first(
    asks: Sequence[Ask], queue: Sequence[Ask], holdings: Sequence[Holding], now: float
) -> list[Ask]:
    """``asks`` with those that would end the drain moved to the front, longest first: each
    one longer than the rest of ``queue`` and what is held need, spread over its candidate
    devices less its own amount (see the module's doc)."""
    held = sum(
        len(h.devices) * h.tenths / TENTHS_PER_DEVICE * (h.until - now)
        for h in holdings
        if h.until > now
    )
    total = held + sum(_gpu_seconds(a) for a in queue)
    ending = [a for a in asks if _ends_the_drain(a, total - _gpu_seconds(a))]
    if not ending:
        return list(asks)
    ending.sort(key=lambda a: -a.duration_s)
    moved = {a.id for a in ending}
    return ending + [a for a in asks if a.id not in moved]


def _gpu_seconds(ask: Ask) -> float:
    return ask.amount.value * ask.duration_s


def _ends_the_drain(ask: Ask, rest_gpu_seconds: float) -> bool:
    """Whether ``ask`` outlasts ``rest_gpu_seconds`` of work on the devices it leaves free."""
    beside = len(ask.candidates) - ask.amount.value
    return beside > 0 and ask.duration_s * beside > rest_gpu_seconds


def usage_of(holdings: Iterable[Holding], share: FairShare | None, now: float) -> dict[str, float]:
    """Each owner's decayed past use plus what their held partitions have used so far."""
    used = share.snapshot(now) if share is not None else {}
    for h in holdings:
        held = len(h.devices) * h.tenths / TENTHS_PER_DEVICE * max(0.0, now - h.since)
        used[h.owner] = used.get(h.owner, 0.0) + held
    return used


# -- the decisions -------------------------------------------------------------------------------


def plan(
    cluster: Cluster,
    holdings: Sequence[Holding],
    queue: Sequence[Ask],
    now: float,
    rules: Rules,
    *,
    share: FairShare | None = None,
    head: int | None = None,
) -> Plan:
    """Who starts now under ``rules``, and the head's reservation (see the module's doc)."""
    used = usage_of(holdings, share, now)
    ordered = order(queue, rules, now, usage=used, head=head, holdings=holdings)
    timeline = Timeline(cluster, holdings, now)
    starts: list[Start] = []
    waiting = list(ordered)
    while waiting:  # from the head, for as long as the head fits
        devices = timeline.fits(waiting[0], now)
        if devices is None:
            break
        timeline.reserve(waiting[0], now, devices)
        starts.append(Start(waiting.pop(0).id, devices))
    if not waiting:
        return Plan(tuple(a.id for a in ordered), tuple(starts), None, None)
    first = waiting[0]
    if first.id != head and rules.policy is not Policy.FIFO:  # a new head: the rule behind it
        waiting[1:] = drain_first(waiting[1:], waiting, timeline.holdings(), now)
        ordered = [*ordered[: len(starts)], *waiting]
    refusal = timeline.why_not(first)
    reserved = timeline.earliest(first)
    waiting_for = {first.id: refusal}
    behind = f"request {first.id} at the head of the queue ({refusal})"
    if rules.policy is Policy.FIFO:
        waiting_for.update((ask.id, behind) for ask in waiting[1:])
    else:
        _backfill(timeline, waiting[1:], first, reserved, starts, waiting_for)
    return Plan(
        tuple(a.id for a in ordered),
        tuple(starts),
        first.id,
        reserved[0] if reserved is not None else None,
        waiting_for,
    )


def _backfill(
    timeline: Timeline,
    behind: Sequence[Ask],
    head: Ask,
    reserved: tuple[float, tuple[int, ...]] | None,
    starts: list[Start],
    waiting_for: dict[int, str],
) -> None:
    """Start, in order, each of ``behind`` that fits now without delaying ``head`` (EASY);
    say why each other one waits. Within one pass capacity only shrinks, so what did not fit
    (by shape), or delayed the head (by shape, from some duration up), is not tried again."""
    now = timeline.now
    free = timeline.free_now()
    refused: dict[tuple[int, tuple[int, ...]], str] = {}
    delaying: dict[tuple[int, tuple[int, ...]], float] = {}  # shortest duration that did
    delay = (
        f"it would delay request {head.id} ({head.owner}, {head.amount} GPU), reserved to "
        f"start in {_seconds(reserved[0] - now)}"
        if reserved is not None
        else ""
    )
    for ask in behind:
        shape = (ask.amount.tenths, ask.candidates)
        if shape in refused or not _may_fit(ask, free):
            waiting_for[ask.id] = refused.get(shape) or refused.setdefault(
                shape, timeline.why_not(ask)
            )
            continue
        if ask.duration_s >= delaying.get(shape, math.inf):
            waiting_for[ask.id] = delay
            continue
        devices = _place_now(ask, free, timeline.cluster)
        if devices is None:
            waiting_for[ask.id] = refused.setdefault(shape, timeline.why_not(ask))
            continue
        if reserved is not None:
            devices = _beside(timeline, ask, devices, head, reserved)
        if devices is None:
            delaying[shape] = min(ask.duration_s, delaying.get(shape, math.inf))
            waiting_for[ask.id] = delay
            continue
        timeline.reserve(ask, now, devices)
        for d in devices:
            free[d] -= ask.amount.tenths_per_device
        starts.append(Start(ask.id, devices))


def _place_now(ask: Ask, free: Mapping[int, int], cluster: Cluster) -> tuple[int, ...] | None:
    """Where the store would put ``ask`` now, given what is ``free``."""
    used = {d: TENTHS_PER_DEVICE - f for d, f in free.items()}
    try:
        return tuple(place(ask.amount, ask.candidates, used, cluster.hosts))
    except (ResourceExhausted, InvalidArgument):
        return None


def _room(ask: Ask, used: Mapping[int, int]) -> bool:
    """A quick, necessary test of whether ``ask`` fits beside what is ``used``."""
    if ask.amount.is_fraction:
        room = TENTHS_PER_DEVICE - ask.amount.tenths
        return any(used.get(i, 0) <= room for i in ask.candidates)
    return sum(used.get(i, 0) == 0 for i in ask.candidates) >= ask.amount.device_count


def _may_fit(ask: Ask, free: Mapping[int, int]) -> bool:
    """A quick, necessary test of whether ``ask`` fits in what is ``free`` now."""
    if ask.amount.is_fraction:
        return any(free[i] >= ask.amount.tenths for i in ask.candidates)
    whole = sum(free[i] == TENTHS_PER_DEVICE for i in ask.candidates)
    return whole >= ask.amount.device_count


def _beside(
    timeline: Timeline,
    ask: Ask,
    devices: tuple[int, ...],
    head: Ask,
    reserved: tuple[float, tuple[int, ...]],
) -> tuple[int, ...] | None:
    """Where ``ask`` may start now without delaying the head: where the store would put it, or
    else away from the devices the head is to get at its reservation; None if neither."""
    if _keeps(timeline, ask, devices, head, reserved[0]):
        return devices
    elsewhere = timeline.fits(ask, timeline.now, avoid=reserved[1])
    if elsewhere is not None and _keeps(timeline, ask, elsewhere, head, reserved[0]):
        return elsewhere
    return None


def _keeps(
    timeline: Timeline, ask: Ask, devices: tuple[int, ...], head: Ask, reserved_at: float
) -> bool:
    """Whether the head still fits at its reservation with ``ask`` started now on ``devices``:
    at once if ``ask`` ends by then, else by trying."""
    end = timeline.now + ask.duration_s
    if end <= reserved_at:
        return True
    trial = timeline.copy()
    trial.add(devices, ask.amount.tenths_per_device, timeline.now, end)
    return trial.fits(head, reserved_at) is not None


def estimate(
    cluster: Cluster,
    holdings: Sequence[Holding],
    ordered: Sequence[Ask],
    now: float,
    *,
    in_order: bool = False,
) -> dict[int, float | None]:
    """Seconds from ``now`` to each request's estimated start, planning them in ``ordered``
    order around what is held (None: it can never fit). ``in_order`` (``fifo``): none starts
    before the one ahead of it."""
    profile = _Profile(cluster, holdings, now)
    etas: dict[int, float | None] = {}
    floor = now
    # what the plan has learnt, by shape: duration -> time, "a request of this shape
    # lasting at least that long fits nowhere before that time". Reservations only add to
    # what is held, and a longer window holds at least as much, so a later request of the same
    # shape starts its search there: the result is the same as a search from the floor,
    # without walking again the stretch of the plan every earlier request has filled.
    learnt: dict[tuple[int, tuple[int, ...]], dict[float, float]] = {}
    for ask in ordered:
        shape = (ask.amount.tenths, ask.candidates)
        known = learnt.setdefault(shape, {})
        bound = max((t for d, t in known.items() if d <= ask.duration_s), default=floor)
        found = profile.earliest(ask, max(floor, bound))
        if found is None:
            etas[ask.id] = None
            continue
        start, devices = found
        known[ask.duration_s] = max(start, known.get(ask.duration_s, start))
        profile.reserve(start, start + ask.duration_s, devices, ask.amount.tenths_per_device)
        etas[ask.id] = start - now
        floor = start if in_order else now
    return etas


class _Profile:
    """What is held on each device as a step function of time, from ``now`` on: segment ``i``
    runs from ``times[i]`` to ``times[i + 1]`` (the last one for ever, and empty)."""

    def __init__(self, cluster: Cluster, holdings: Iterable[Holding], now: float) -> None:
        self.cluster = cluster
        live = [h for h in holdings if h.until > now]
        self.times = sorted({now, *(h.until for h in live)})
        self.used: list[dict[int, int]] = [{} for _ in self.times]
        for h in live:
            self._add(0, bisect.bisect_left(self.times, h.until), h.devices, h.tenths)

    def _add(self, first: int, last: int, devices: Iterable[int], tenths: int) -> None:
        for segment in self.used[first:last]:
            for d in devices:
                segment[d] = segment.get(d, 0) + tenths

    def _split(self, t: float) -> int:
        """The index of the segment starting at ``t``, made if need be."""
        i = bisect.bisect_left(self.times, t)
        if i < len(self.times) and self.times[i] == t:
            return i
        self.times.insert(i, t)
        self.used.insert(i, dict(self.used[i - 1]))
        return i

    def earliest(self, ask: Ask, floor: float) -> tuple[float, tuple[int, ...]] | None:
        """The first segment start from ``floor`` at which ``ask`` fits for its duration."""
        first = self._split(floor)
        for k in range(first, len(self.times)):
            if not _room(ask, self.used[k]):  # not even at its start
                continue
            end = self.times[k] + ask.duration_s
            most: dict[int, int] = {}
            for j in range(k, bisect.bisect_left(self.times, end)):
                for d, tenths in self.used[j].items():
                    if tenths > most.get(d, 0):
                        most[d] = tenths
            if not _room(ask, most):
                continue
            try:
                devices = place(ask.amount, ask.candidates, most, self.cluster.hosts)
            except (ResourceExhausted, InvalidArgument):
                continue
            return self.times[k], tuple(devices)
        return None

    def reserve(self, start: float, end: float, devices: Iterable[int], tenths: int) -> None:
        first = self._split(start)
        self._add(first, self._split(end), devices, tenths)


def _seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"
