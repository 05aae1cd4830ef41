import pytest

from chronos import GpuAmount, InvalidArgument, ResourceExhausted
from chronos.allocator import place

pytestmark = pytest.mark.unit


def a(value: str) -> GpuAmount:
    return GpuAmount.parse(value)


def test_tenths_sum_exactly_to_one_device() -> None:
    used: dict[int, int] = {}
    for value in ("0.1", "0.2", "0.7"):
        [device] = place(a(value), [0], used)
        used[device] = used.get(device, 0) + a(value).tenths
    assert used == {0: 10}
    with pytest.raises(ResourceExhausted):
        place(a("0.1"), [0], used)


def test_eleven_tenths_do_not_fit_one_device() -> None:
    used = {0: 0}
    for _ in range(10):
        place(a("0.1"), [0], used)
        used[0] += 1
    with pytest.raises(
        ResourceExhausted, match=r"no device has 0\.1 free \(largest free: 0 on gpu0\)"
    ):
        place(a("0.1"), [0], used)


def test_best_fit_keeps_large_holes_for_large_requests() -> None:
    used = {0: 6, 1: 2, 2: 0}  # free: 0.4, 0.8, 1.0
    assert place(a("0.3"), [0, 1, 2], used) == [0]
    assert place(a("0.5"), [0, 1, 2], used) == [1]
    assert place(a("0.9"), [0, 1, 2], used) == [2]


def test_message_names_the_largest_free_share() -> None:
    with pytest.raises(ResourceExhausted) as info:
        place(a("0.5"), [0, 1], {0: 7, 1: 8})
    assert str(info.value) == "no device has 0.5 free (largest free: 0.3 on gpu0)"


def test_whole_amounts_take_only_fully_free_devices() -> None:
    assert place(a("2"), [0, 1, 2, 3], {0: 1, 2: 0}) == [1, 2]
    with pytest.raises(ResourceExhausted, match="fully free now: gpu3"):
        place(a("2"), [0, 1, 2, 3], {0: 1, 1: 10, 2: 5})


def test_more_devices_than_candidates_is_invalid() -> None:
    with pytest.raises(InvalidArgument, match="needs 3 devices, but only 2"):
        place(a("3"), [0, 1], {})


def test_whole_devices_for_one_partition_come_from_one_host() -> None:
    hosts = {0: "a", 1: "b", 2: "b", 3: "c", 4: "c", 5: "c"}
    # two free on b, three on c: the best fit is b, which keeps c's three together
    assert place(GpuAmount.parse("2"), list(hosts), {}, hosts) == [1, 2]
    assert place(GpuAmount.parse("3"), list(hosts), {}, hosts) == [3, 4, 5]
    with pytest.raises(ResourceExhausted, match="needs 2 fully free devices on one host"):
        place(GpuAmount.parse("2"), list(hosts), {2: 1, 4: 1, 5: 1}, hosts)
    assert place(GpuAmount.parse("0.5"), list(hosts), {}, hosts) == [0]  # fractions: best fit
