"""Where a new partition goes: a pure function of the devices and what is already taken.

Capacity is counted in tenths of a device, so sums are exact. A fraction goes to the candidate
device with the least free capacity that still holds it (best fit, so large holes stay whole for
large requests); whole amounts take devices nobody holds any share of.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chronos.amount import TENTHS_PER_DEVICE, GpuAmount
from chronos.errors import InvalidArgument, ResourceExhausted


def place(
    amount: GpuAmount,
    candidates: Sequence[int],
    used: Mapping[int, int],
    hosts: Mapping[int, str | None] | None = None,
) -> list[int]:
    """Indices of the devices that ``amount`` takes among ``candidates``.

    ``used`` maps a device index to the tenths already held on it (absent: none). ``hosts``
    maps a device to the host it is on, when devices span hosts (a Swarm): whole devices for one
    partition are then taken from one host. Raises `ResourceExhausted` saying what is free when
    nothing fits, and `InvalidArgument` when the candidates could never hold the amount.
    """
    if amount.device_count > len(candidates):
        raise InvalidArgument(
            f"GPU amount {amount} needs {amount.device_count} devices, "
            f"but only {len(candidates)} can be chosen from"
        )
    free = {i: TENTHS_PER_DEVICE - used.get(i, 0) for i in candidates}
    if amount.is_fraction:
        return [_best_fit(amount, free)]
    whole = [i for i in candidates if free[i] == TENTHS_PER_DEVICE]
    if hosts and len({hosts.get(i) for i in whole}) > 1:
        by_host: dict[str | None, list[int]] = {}
        for i in whole:
            by_host.setdefault(hosts.get(i), []).append(i)
        fits = [group for group in by_host.values() if len(group) >= amount.device_count]
        if fits:  # the host with the fewest free devices that still holds it (best fit)
            return min(fits, key=len)[: amount.device_count]
        most = max(by_host.values(), key=len)
        raise ResourceExhausted(
            f"{amount} GPU needs {amount.device_count} fully free devices on one host "
            f"(at most {len(most)} on {hosts.get(most[0])})"
        )
    if len(whole) < amount.device_count:
        listed = ", ".join(f"gpu{i}" for i in whole) or "none"
        raise ResourceExhausted(
            f"{amount} GPU needs {amount.device_count} fully free devices "
            f"(fully free now: {listed})"
        )
    return whole[: amount.device_count]


def _best_fit(amount: GpuAmount, free: Mapping[int, int]) -> int:
    fits = [i for i, tenths in free.items() if tenths >= amount.tenths]
    if fits:
        return min(fits, key=lambda i: (free[i], i))
    largest = max(free, key=lambda i: (free[i], -i))
    raise ResourceExhausted(
        f"no device has {amount} free "
        f"(largest free: {free[largest] / TENTHS_PER_DEVICE:g} on gpu{largest})"
    )
