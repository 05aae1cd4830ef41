"""`gateway.quotas`: settings checked at start-up, what a user holds, and the messages of a
refused request or extension (they name the limit, what the user holds and what to do)."""

from __future__ import annotations

import pytest

from chronos import GpuAmount, Partition
from cumulus_jupyter.errors import Conflict, InvalidArgument, ResourceExhausted
from gateway.quotas import DurationLimit, Holdings, Quotas, check_extension, check_request

pytestmark = pytest.mark.unit


def partition(
    owner: str, amount: float, pid: str = "p-000000000001", lasts: float = 600
) -> Partition:
    return Partition(
        id=pid, node="local", devices=(0,), amount=GpuAmount.parse(amount),
        memory_bytes=2**30, owner=owner, created_at=1000.0, expires_at=1000.0 + lasts,
    )  # fmt: skip


def test_unset_settings_are_no_limit() -> None:
    quotas = Quotas.configured(None, None, "")
    assert quotas == Quotas() and not quotas.any
    assert quotas.duration_limit() is None


@pytest.mark.parametrize(
    ("gpu", "kernels", "duration", "message"),
    [
        (
            0.0,
            None,
            "",
            "--CumulusKernelManager.max_gpu_per_user must be a GPU amount of at least 0.1",
        ),
        (0.05, None, "", "0.1 is the smallest a request can ask), not 0.05; leave it unset"),
        (-1.0, None, "", "not -1; leave it unset for no limit"),
        (float("nan"), None, "", "max_gpu_per_user must be a GPU amount of at least 0.1"),
        (None, 0, "", "--CumulusKernelManager.max_kernels_per_user must be a positive number"),
        (None, -3, "", "not -3; leave it unset for no limit"),
        (None, None, "0", "--CumulusKernelManager.max_duration: Invalid duration: 0."),
        (None, None, "soon", "Invalid duration: soon. Must be 60 s to 86400 s"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(
    gpu: float | None, kernels: int | None, duration: str, message: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        Quotas.configured(gpu, kernels, duration)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_settings_parse_with_chronos_grammar() -> None:
    quotas = Quotas.configured(1.5, 3, "2h")
    assert quotas == Quotas(1.5, 3, 7200) and quotas.any


def test_the_tighter_duration_limit_wins_and_is_named() -> None:
    quotas = Quotas(max_duration_s=7200)
    assert quotas.duration_limit("short", 1800) == DurationLimit(
        1800, "kernelspec short's max_duration"
    )
    assert quotas.duration_limit("long", 36000) == DurationLimit(7200, "max_duration")
    assert Quotas().duration_limit("short", 1800) == DurationLimit(
        1800, "kernelspec short's max_duration"
    )


def test_holdings_count_the_users_partitions_kernels_and_queued_requests() -> None:
    mine = [partition("alice", 0.4, "p-00000000000a"), partition("alice", 0.4, "p-00000000000b")]
    theirs = [partition("bob", 0.5, "p-00000000000c")]
    queue = [{"owner": "alice", "amount": 0.2}, {"owner": "bob", "amount": 1.0}]
    held = Holdings.of("alice", mine + theirs, [mine[0], theirs[0]], queue)
    assert held == Holdings("alice", tenths=8, partitions=2, kernels=1, queued_tenths=2, queued=1)


def test_over_max_gpu_per_user_names_the_limit_and_what_is_held() -> None:
    held = Holdings("alice", tenths=8, partitions=2, kernels=2)
    with pytest.raises(ResourceExhausted) as info:
        check_request(Quotas(max_gpu_per_user=1.0), held, GpuAmount.parse(0.5), 600, None)
    assert str(info.value) == (
        "max_gpu_per_user is 1.0 GPU; alice holds 0.8 GPU in 2 partitions; this request asks "
        "0.5. To go on, ask for at most 0.2 GPU or release a partition (%cumulus release, or "
        "shut a kernel down)"
    )
    check_request(Quotas(max_gpu_per_user=1.0), held, GpuAmount.parse(0.2), 600, None)  # fits


def test_queued_requests_count_against_max_gpu_per_user() -> None:
    held = Holdings("alice", tenths=5, partitions=1, kernels=1, queued_tenths=5, queued=1)
    with pytest.raises(ResourceExhausted) as info:
        check_request(Quotas(max_gpu_per_user=1.0), held, GpuAmount.parse(0.1), 600, None)
    message = str(info.value)
    assert "alice holds 0.5 GPU in 1 partition and waits for 0.5 more in the queue" in message
    assert "ask for at most" not in message  # nothing is left to ask for


def test_over_max_kernels_per_user_says_what_to_do() -> None:
    held = Holdings("alice", tenths=2, partitions=2, kernels=2)
    with pytest.raises(ResourceExhausted) as info:
        check_request(Quotas(max_kernels_per_user=2), held, GpuAmount.parse(0.1), 600, None)
    assert str(info.value).startswith(
        "max_kernels_per_user is 2; alice holds 2 kernels. Shut one down"
    )
    check_request(Quotas(max_kernels_per_user=3), held, GpuAmount.parse(0.1), 600, None)


def test_a_duration_over_the_limit_is_refused_with_the_most_allowed() -> None:
    limit = DurationLimit(1800, "kernelspec short's max_duration")
    with pytest.raises(ResourceExhausted) as info:
        check_request(Quotas(), Holdings("alice"), GpuAmount.parse(0.1), 3600, limit)
    assert str(info.value) == (
        "kernelspec short's max_duration is 30m; this request asks 1h. Ask for at most 30m "
        "(extend it later if need be)"
    )
    check_request(Quotas(), Holdings("alice"), GpuAmount.parse(0.1), 1800, limit)


def test_an_extension_past_max_duration_is_a_conflict_saying_how_much_is_left() -> None:
    ten_minutes = partition("alice", 0.1, lasts=600)
    limit = DurationLimit(7200, "max_duration")
    check_extension(ten_minutes, 6600, limit)  # exactly up to the limit
    check_extension(ten_minutes, 10**5, None)  # no limit here (Chronos's 24 h still holds)
    with pytest.raises(Conflict) as info:
        check_extension(ten_minutes, 7200, limit)
    assert str(info.value) == (
        "Cannot extend partition p-000000000001 by 2h: it would last 2h10m in all and "
        "max_duration is 2h; it can be extended by 1h50m at most"
    )
    with pytest.raises(Conflict) as info:
        check_extension(partition("alice", 0.1, lasts=7200), 60, limit)
    assert str(info.value).endswith(
        "it cannot be extended further: start a new kernel (or partition) to go on"
    )
