"""Where a new partition goes: a pure function of the devices and what is already taken.

Capacity is counted in tenths of a device, so sums are exact. A fraction goes to the candidate
device with the least free capacity that still holds it (best fit, so large holes stay whole for
large requests); whole amounts take devices nobody holds any share of.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from chronos.amount import TENTHS_PER_DEVICE, GpuAmount
from chronos.errors import InvalidArgument, ResourceExhausted


def place(amount: GpuAmount, candidates: Sequence[int], used: Mapping[int, int]) -> list[int]:
    """Indices of the devices that ``amount`` takes among ``candidates``.

    ``used`` maps a device index to the tenths already held on it (absent: none). Raises
    `ResourceExhausted` saying what is free when nothing fits, and `InvalidArgument` when the
    candidates could never hold the amount.
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
