"""`gateway.scheduler`, pure: the three policies, the EASY rule (backfill only what does not
delay the head's reservation), estimated starts from expiries, fair-share order with its
anti-starvation rules, and, over random workloads on a simulated clock, the guarantees: every
request starts no later than the reservation it got at the head, every wait is bounded, the
devices planned are the ones Chronos's allocator would choose, and nothing is over-committed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chronos.allocator import place
from chronos.amount import GpuAmount
from gateway.scheduler import (
    Ask,
    Cluster,
    FairShare,
    Holding,
    Policy,
    Rules,
    Timeline,
    estimate,
    order,
    plan,
)

pytestmark = pytest.mark.unit

ONE = Cluster((0,))
TWO = Cluster((0, 1))
H = 3600.0


def ask(
    id: int, amount: str, duration: float = H, owner: str = "u", at: float = 0.0, on: int = 1
) -> Ask:
    return Ask(id, GpuAmount.parse(amount), duration, owner, tuple(range(on)), at)


def held(devices: tuple[int, ...], tenths: int, until: float, owner: str = "x") -> Holding:
    return Holding(devices, tenths, until, owner, 0.0)


# -- the policies, one decision at a time --------------------------------------------------------


def test_fifo_starts_from_the_head_and_stops_at_the_first_that_does_not_fit() -> None:
    queue = [ask(1, "0.3", at=1), ask(2, "0.5", at=2), ask(3, "0.1", at=3)]
    decided = plan(ONE, [held((0,), 3, H)], queue, 0.0, Rules(Policy.FIFO))
    assert [s.id for s in decided.starts] == [1]
    assert (decided.head, decided.reserved_at) == (2, H)
    assert "at the head of the queue" in decided.waiting_for[3]


def test_backfill_starts_what_ends_before_the_heads_reservation() -> None:
    holding = [held((0,), 5, H)]
    queue = [ask(1, "0.6", at=1), ask(2, "0.5", 2 * H, at=2), ask(3, "0.3", H / 2, at=3)]
    decided = plan(ONE, holding, queue, 0.0, Rules(Policy.BACKFILL))
    assert (decided.head, decided.reserved_at) == (1, H)
    assert [s.id for s in decided.starts] == [3]  # ends at H/2
    assert "would delay request 1" in decided.waiting_for[2]  # 0.5 + 0.6 > 1 at H


def test_backfill_starts_a_long_request_that_leaves_the_head_room() -> None:
    holding = [held((0,), 5, H)]
    queue = [ask(1, "0.5", at=1), ask(2, "0.6", at=2), ask(3, "0.4", 10 * H, at=3)]
    decided = plan(ONE, holding, queue, 0.0, Rules(Policy.BACKFILL))
    assert [s.id for s in decided.starts] == [1]  # the head fits: it starts
    decided = plan(ONE, [*holding, held((0,), 5, H)], queue[1:], 0.0, Rules(Policy.BACKFILL))
    assert decided.starts == () and decided.reserved_at == H


def test_backfill_moves_a_request_off_the_devices_the_head_will_take() -> None:
    holding = [held((0,), 5, H), held((1,), 5, 2 * H)]
    queue = [ask(1, "1", at=1, on=2), ask(2, "0.4", 3 * H, at=2, on=2)]
    decided = plan(TWO, holding, queue, 0.0, Rules(Policy.BACKFILL))
    assert (decided.head, decided.reserved_at) == (1, H)  # gpu0, when its holder ends
    # best fit would put it on gpu0 (a tie, lower index); that delays the head: gpu1 does not
    assert [(s.id, s.devices) for s in decided.starts] == [(2, (1,))]
    assert place(GpuAmount.parse("0.4"), [0, 1], {0: 5, 1: 5}) == [0]


def test_a_head_that_can_never_fit_holds_no_reservation_and_blocks_no_one() -> None:
    split = Cluster((0, 1), {0: "a", 1: "b"})  # two GPUs, but one per host
    queue = [ask(1, "2", at=1, on=2), ask(2, "0.5", at=2, on=2)]
    decided = plan(split, [], queue, 0.0, Rules(Policy.BACKFILL))
    assert (decided.head, decided.reserved_at) == (1, None)
    assert [s.id for s in decided.starts] == [2]
    assert estimate(split, [], queue, 0.0)[1] is None


def test_estimates_follow_expiries_and_the_requests_ahead() -> None:
    holding = [held((0,), 10, H), held((1,), 10, 2 * H)]
    queue = [ask(1, "1", at=1, on=2), ask(2, "2", at=2, on=2), ask(3, "0.5", H / 2, at=3, on=2)]
    assert estimate(TWO, holding, queue, 0.0) == {1: H, 2: 2 * H, 3: 3 * H}
    # a 0.5 for half an hour fits beside nobody until both GPUs go to request 2 ... in order
    fifo = estimate(TWO, holding, queue, 0.0, in_order=True)
    assert fifo == {1: H, 2: 2 * H, 3: 3 * H}
    shorter = [ask(1, "1", H / 2, at=1, on=2), ask(3, "0.5", H / 2, at=3, on=2)]
    assert estimate(TWO, holding, shorter, 0.0) == {1: H, 3: H + H / 2}


def test_estimate_from_now_counts_seconds_from_now() -> None:
    holding = [held((0,), 10, 5000.0)]
    assert estimate(ONE, holding, [ask(1, "0.5")], 4000.0) == {1: 1000.0}
    assert estimate(ONE, [], [ask(1, "0.5")], 4000.0) == {1: 0.0}


# -- fair share ----------------------------------------------------------------------------------


def test_usage_decays_with_the_half_life() -> None:
    share = FairShare(half_life_s=100.0)
    share.charge("ana", 800.0, at=0.0)
    assert share.usage("ana", 100.0) == pytest.approx(400.0)
    share.charge("ana", 100.0, at=200.0)
    assert share.usage("ana", 200.0) == pytest.approx(300.0)
    assert share.usage("nobody", 200.0) == 0.0
    share.charge("bo", 100.0, at=300.0)
    share.charge("bo", 100.0, at=200.0)  # ended earlier, charged later: decayed from then
    assert share.usage("bo", 300.0) == pytest.approx(150.0)
    with pytest.raises(ValueError, match="half-life must be positive"):
        FairShare(0.0)


def test_fair_orders_by_usage_then_arrival_and_keeps_the_head() -> None:
    queue = [ask(1, "1", owner="heavy", at=1), ask(2, "1", owner="b", at=2)]
    queue += [ask(3, "1", owner="a", at=3), ask(4, "1", owner="a", at=4)]
    usage = {"heavy": 1e6, "a": 10.0, "b": 10.0}
    rules = Rules(Policy.FAIR)
    assert [a.id for a in order(queue, rules, 10.0, usage=usage)] == [2, 3, 4, 1]
    assert [a.id for a in order(queue, rules, 10.0, usage=usage, head=1)] == [1, 2, 3, 4]
    assert [a.id for a in order(queue, Rules(Policy.BACKFILL), 10.0, usage=usage)] == [1, 2, 3, 4]


def test_fair_counts_use_in_seconds_of_the_amount_asked() -> None:
    # "wide" held 2 GPUs for 30 min (3,600 GPU-s), "thin" a tenth for 3 h (1,080 GPU-s): per
    # GPU-second "thin" comes first; in time held at the size asked, "wide" has had 30 min of
    # its 2 GPUs, "thin" 3 h of its tenth
    queue = [ask(1, "0.1", owner="thin", at=1), ask(2, "2", owner="wide", at=2, on=2)]
    usage = {"wide": 3_600.0, "thin": 1_080.0}
    assert [a.id for a in order(queue, Rules(Policy.FAIR), 10.0, usage=usage)] == [2, 1]


def test_fair_serves_aged_requests_first_in_arrival_order() -> None:
    rules = Rules(Policy.FAIR, half_life_s=100.0)  # aged after 200 s
    queue = [ask(1, "1", owner="heavy", at=0), ask(2, "1", owner="light", at=150)]
    usage = {"heavy": 1e6}
    assert [a.id for a in order(queue, rules, 199.0, usage=usage)] == [2, 1]
    assert [a.id for a in order(queue, rules, 200.0, usage=usage)] == [1, 2]


def test_fair_ages_a_request_once_it_has_waited_four_times_its_duration() -> None:
    # heavy's two-hour request came first; light's five-minute one, from a user with more
    # recent use, is aged after 20 min of waiting (slowdown 5) and goes first; heavy's, aged
    # only after two half-lives, goes first among the young but after every aged one
    rules = Rules(Policy.FAIR, half_life_s=3600.0)
    queue = [ask(1, "1", 2 * H, owner="heavy", at=0), ask(2, "1", 300, owner="light", at=60)]
    usage = {"heavy": 10.0, "light": 1e6}
    assert rules.aged_at(queue[0]) == 2 * H and rules.aged_at(queue[1]) == 60 + 1200
    assert [a.id for a in order(queue, rules, 1259.0, usage=usage)] == [1, 2]
    assert [a.id for a in order(queue, rules, 1260.0, usage=usage)] == [2, 1]
    assert [a.id for a in order(queue, rules, 2 * H, usage=usage)] == [2, 1]  # aged earlier


def test_fair_counts_what_held_partitions_have_used_so_far() -> None:
    holding = [Holding((0,), 10, 2 * H, "hog", since=0.0)]
    queue = [ask(1, "0.5", owner="hog", at=1), ask(2, "0.5", owner="new", at=2)]
    decided = plan(TWO, holding, queue, H, Rules(Policy.FAIR), share=FairShare())
    assert decided.order == (2, 1)


def test_a_request_that_would_end_the_drain_moves_up_behind_the_head() -> None:
    short = [ask(i, "0.5", 600, at=i, on=2) for i in (1, 2, 3)]
    long = ask(4, "1", 4 * H, owner="heavy", at=4, on=2)
    for policy in (Policy.BACKFILL, Policy.FAIR):
        ordered = order([*short, long], Rules(policy), 10.0, head=1)
        assert [a.id for a in ordered] == [1, 4, 2, 3]  # the head keeps its place
    fifo = order([*short, long], Rules(Policy.FIFO), 10.0, head=1)
    assert [a.id for a in fifo] == [1, 2, 3, 4]


def test_the_drain_rule_waits_while_the_backlog_outlasts_the_request() -> None:
    backlog = [ask(i, "1", H, at=i, on=2) for i in range(1, 6)]  # 5 GPU-hours on 1 device
    long = ask(9, "1", 4 * H, owner="heavy", at=9, on=2)
    rules = Rules(Policy.BACKFILL)
    assert [a.id for a in order([*backlog, long], rules, 10.0, head=1)][-1] == 9
    queue = [ask(1, "1", H, at=1, on=2), ask(2, "1", H, at=2, on=2), long]
    assert [a.id for a in order(queue, rules, 10.0, head=1)] == [1, 9, 2]
    holding = [held((0, 1), 10, 5 * H)]  # or what is held: 10 GPU-hours
    assert [a.id for a in order(queue, rules, 10.0, head=1, holdings=holding)] == [1, 2, 9]


def test_a_new_head_keeps_its_place_ahead_of_the_request_that_ends_the_drain() -> None:
    holding = [held((0,), 10, H)]
    queue = [ask(1, "2", H, at=1, on=2), ask(2, "1", 4 * H, owner="heavy", at=2, on=2)]
    decided = plan(TWO, holding, queue, 0.0, Rules(Policy.BACKFILL))
    assert (decided.head, decided.reserved_at) == (1, H)
    assert decided.starts == ()  # on gpu1 it would delay the head
    assert decided.order == (1, 2)


# -- guarantees over random workloads ------------------------------------------------------------


@dataclass
class Outcome:
    queued: dict[int, float] = field(default_factory=dict)
    started: dict[int, float] = field(default_factory=dict)
    reserved: dict[int, float | None] = field(default_factory=dict)  # got on reaching the head


def simulate(cluster: Cluster, asks: list[Ask], rules: Rules, early: list[float]) -> Outcome:
    """Replay ``asks`` (arriving at their ``queued_at``) on a simulated clock, as the broker
    does with the store: each start is checked against the allocator, partitions end at their
    expiry or earlier (``early``: the share of its duration each one runs)."""
    outcome = Outcome(queued={a.id: a.queued_at for a in asks})
    arrivals = sorted(asks, key=lambda a: (a.queued_at, a.id))
    holdings: list[tuple[Holding, float]] = []  # with the time it really ends
    queue: list[Ask] = []
    share, head, now = FairShare(rules.half_life_s), None, 0.0
    while arrivals or queue:
        ends = [end for _, end in holdings]
        now = min([*ends, *(a.queued_at for a in arrivals[:1])])
        for h, end in [x for x in holdings if x[1] <= now]:
            share.charge(h.owner, len(h.devices) * h.tenths / 10 * (end - h.since), end)
        holdings = [x for x in holdings if x[1] > now]
        while arrivals and arrivals[0].queued_at <= now:
            queue.append(arrivals.pop(0))
        current = [h for h, _ in holdings]
        decided = plan(cluster, current, queue, now, rules, share=share, head=head)
        for start in decided.starts:
            chosen = next(a for a in queue if a.id == start.id)
            used: dict[int, int] = {}
            for h, _ in holdings:
                for d in h.devices:
                    used[d] = used.get(d, 0) + h.tenths
            allowed = place(chosen.amount, list(start.devices), used, cluster.hosts)
            assert tuple(allowed) == start.devices  # fits where planned: never over-committed
            until = now + chosen.duration_s
            runs = chosen.duration_s * early[chosen.id % len(early)]
            holding = Holding(
                start.devices, chosen.amount.tenths_per_device, until, chosen.owner, now
            )
            holdings.append((holding, now + runs))
            queue.remove(chosen)
            outcome.started[chosen.id] = now
        if decided.head is not None and decided.reserved_at is not None:
            first = next(a for a in queue if a.id == decided.head)
            eta = estimate(cluster, [h for h, _ in holdings], [first], now)[first.id]
            assert eta == decided.reserved_at - now  # the estimate is the reservation
        if decided.head is not None and decided.head != head:
            outcome.reserved[decided.head] = decided.reserved_at
        head = decided.head
    return outcome


AMOUNTS = ["0.1", "0.2", "0.3", "0.5", "0.7", "0.9", "1", "2"]


@st.composite
def workloads(draw: st.DrawFn) -> tuple[Cluster, list[Ask], list[float]]:
    cluster = Cluster(tuple(range(draw(st.integers(2, 4)))))
    count = draw(st.integers(1, 25))
    asks = []
    clock = 0.0
    for i in range(1, count + 1):
        clock += draw(st.sampled_from([0.0, 60.0, 300.0, 1800.0]))
        amount = draw(st.sampled_from(AMOUNTS))
        duration = draw(st.sampled_from([300.0, 900.0, 3600.0, 4 * H]))
        owner = draw(st.sampled_from(["a", "b", "c", "heavy"]))
        asks.append(ask(i, amount, duration, owner, clock, on=len(cluster.devices)))
    early = draw(st.lists(st.sampled_from([1.0, 1.0, 0.5, 0.1]), min_size=1, max_size=5))
    return cluster, asks, early


@pytest.mark.parametrize("policy", list(Policy))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workload=workloads())
def test_every_request_starts_by_its_reservation_and_waits_a_bounded_time(
    policy: Policy, workload: tuple[Cluster, list[Ask], list[float]]
) -> None:
    cluster, asks, early = workload
    rules = Rules(policy, half_life_s=1800.0)
    outcome = simulate(cluster, asks, rules, early)
    assert set(outcome.started) == {a.id for a in asks}  # everyone starts
    longest = max(a.duration_s for a in asks)
    aging = rules.aged_after_s if policy is Policy.FAIR else 0.0
    for a in asks:
        reserved = outcome.reserved.get(a.id)
        if reserved is not None:
            assert outcome.started[a.id] <= reserved + 1e-9, f"request {a.id} started late"
        if policy is Policy.FAIR:  # once aged, only those aged before it go first
            ahead = sum(1 for b in asks if b.id != a.id and rules.aged_at(b) <= rules.aged_at(a))
        else:
            ahead = sum(1 for b in asks if (b.queued_at, b.id) < (a.queued_at, a.id))
        waited = outcome.started[a.id] - a.queued_at
        assert waited <= aging + (ahead + 2) * longest, f"request {a.id} waited {waited}"


def test_a_heavy_user_is_not_starved_by_a_stream_of_new_users() -> None:
    # one GPU, always busy: heavy has used it for an hour, a new user (no usage) asks for an
    # hour of it every 10 min; heavy's second request would come last of all, for ever
    asks = [ask(0, "1", H, owner="heavy", at=0.0), ask(1, "1", H, owner="new1", at=1.0)]
    asks += [ask(2, "1", H, owner="heavy", at=2.0)]
    asks += [ask(i, "1", H, owner=f"new{i}", at=i * 600.0) for i in range(3, 60)]
    rules = Rules(Policy.FAIR, half_life_s=1800.0)  # aged after an hour
    outcome = simulate(ONE, asks, rules, [1.0])
    assert outcome.started[2] == 3 * H  # aged at 1 h + 2 s: head at 2 h, on the GPU at 3 h
    never = Rules(Policy.FAIR, 1800.0, aging_s=1e9, aged_slowdown=math.inf)
    unaged = simulate(ONE, asks, never, [1.0])
    assert unaged.started[2] == 59 * H  # without aging: after every newcomer


# -- estimates: the fast plan is the plain one ---------------------------------------------------


def plain_estimate(
    cluster: Cluster, holdings: list[Holding], ordered: list[Ask], now: float, in_order: bool
) -> dict[int, float | None]:
    """The conservative plan searched the plain way: each request at the first moment from the
    floor (now, or the start of the one ahead under ``in_order``) or any end of what is held or
    planned, at which it fits for its whole duration."""
    timeline = Timeline(cluster, holdings, now)
    ends = [h.until for h in holdings]
    etas: dict[int, float | None] = {}
    floor = now
    for a in ordered:
        found = None
        for moment in sorted({floor, *(e for e in ends if e > floor)}):
            devices = timeline.fits(a, moment)
            if devices is not None:
                found = moment, devices
                break
        if found is None:
            etas[a.id] = None
            continue
        start, devices = found
        timeline.reserve(a, start, devices)
        ends.append(start + a.duration_s)
        etas[a.id] = start - now
        floor = start if in_order else now
    return etas


@st.composite
def queues(draw: st.DrawFn) -> tuple[Cluster, list[Holding], list[Ask]]:
    size = draw(st.integers(1, 4))
    hosts = draw(st.sampled_from([None, {d: f"h{d % 2}" for d in range(size)}]))
    cluster = Cluster(tuple(range(size)), hosts)
    holdings = []
    for d in range(size):
        for _ in range(draw(st.integers(0, 2))):
            tenths = draw(st.sampled_from([1, 3, 5]))
            holdings.append(Holding((d,), tenths, draw(st.sampled_from([600.0, 1800.0, H]))))
    asks = []
    for i in range(1, draw(st.integers(1, 60)) + 1):
        amount = draw(st.sampled_from(AMOUNTS))
        duration = draw(st.sampled_from([300.0, 600.0, 900.0, 3600.0, 2 * H]))
        on = draw(st.integers(1, size))
        asks.append(ask(i, amount, duration, at=float(i), on=on))
    return cluster, holdings, asks


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(queue=queues(), in_order=st.booleans())
def test_estimate_plans_each_request_where_the_plain_search_does(
    queue: tuple[Cluster, list[Holding], list[Ask]], in_order: bool
) -> None:
    # estimate() skips, for each shape, the stretch where an earlier request of that shape and
    # no longer duration found no room; that must never change an answer
    cluster, holdings, asks = queue
    fast = estimate(cluster, holdings, asks, 0.0, in_order=in_order)
    assert fast == plain_estimate(cluster, holdings, asks, 0.0, in_order)


def test_estimate_skips_what_an_earlier_request_of_its_shape_searched() -> None:
    # one GPU held for an hour, then 0.5-GPU requests: the second of an hour beside the first,
    # one of two hours after both, a half-hour one beside that; a 0.1 GPU (another shape) is
    # searched from the start and fits when the half hour ends
    holding = [held((0,), 10, H)]
    queue = [ask(1, "0.5", H), ask(2, "0.5", H), ask(3, "0.5", 2 * H), ask(4, "0.5", H / 2)]
    assert estimate(ONE, holding, queue, 0.0) == {1: H, 2: H, 3: 2 * H, 4: 2 * H}
    queue.append(ask(5, "0.1", H / 2))
    assert estimate(ONE, holding, queue, 0.0)[5] == 2.5 * H
