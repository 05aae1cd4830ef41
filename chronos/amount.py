"""GPU amounts and partition durations: parsing and the rules they obey.

An amount is either a fraction of one device, 0.1 to 0.9 in steps of 0.1, or a whole number of
devices, 1 to 8. It is held in tenths so that sums never drift (0.1 + 0.2 + 0.7 is exactly one
device). The same rule and message apply in the library, the CLI and the gateway.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from chronos.errors import InvalidArgument

TENTHS_PER_DEVICE = 10
MAX_WHOLE_DEVICES = 8
AMOUNT_RULE = "Must be 0.1-0.9 or whole number 1-8"

MIN_DURATION_S = 60
MAX_DURATION_S = 86_400
DEFAULT_DURATION_S = 3_600
DURATION_RULE = 'Must be 60 s to 86400 s (24h), e.g. 90, "30m", "2h"'

# Floats produced by arithmetic (0.1 * 3) are accepted when they are this close to a tenth.
_FLOAT_TOLERANCE = 1e-9


@dataclass(frozen=True, order=True)
class GpuAmount:
    """A validated GPU amount, stored as tenths of a device (1-9, or 10 x whole devices)."""

    tenths: int

    def __post_init__(self) -> None:
        whole, rest = divmod(self.tenths, TENTHS_PER_DEVICE)
        valid_fraction = whole == 0 and 1 <= rest <= 9
        valid_whole = rest == 0 and 1 <= whole <= MAX_WHOLE_DEVICES
        if not (valid_fraction or valid_whole):
            shown = Decimal(self.tenths) / TENTHS_PER_DEVICE  # exact: a float overflows at 1e309
            raise InvalidArgument(f"Invalid GPU amount: {shown:g}. {AMOUNT_RULE}")

    @classmethod
    def parse(cls, value: str | float | int | GpuAmount) -> GpuAmount:
        """Parse ``0.5``, ``"0.5"``, ``2`` or ``"2"``; anything else raises `InvalidArgument`."""
        if isinstance(value, GpuAmount):
            return value
        tenths = _to_tenths(value)
        if tenths is None:
            raise InvalidArgument(f"Invalid GPU amount: {_show(value)}. {AMOUNT_RULE}")
        try:
            return cls(tenths)
        except InvalidArgument:
            raise InvalidArgument(f"Invalid GPU amount: {_show(value)}. {AMOUNT_RULE}") from None

    @property
    def is_fraction(self) -> bool:
        """True for 0.1-0.9: a share of one device rather than whole devices."""
        return self.tenths < TENTHS_PER_DEVICE

    @property
    def device_count(self) -> int:
        """How many devices the amount spans."""
        return 1 if self.is_fraction else self.tenths // TENTHS_PER_DEVICE

    @property
    def tenths_per_device(self) -> int:
        """The share taken on each device it spans."""
        return self.tenths if self.is_fraction else TENTHS_PER_DEVICE

    @property
    def value(self) -> float:
        """The amount as a number of devices (0.5, 2.0)."""
        return self.tenths / TENTHS_PER_DEVICE

    def __str__(self) -> str:
        return f"{self.value:g}"


def _show(value: object) -> str:
    return value.strip() if isinstance(value, str) else repr(value)


def _to_tenths(value: str | float | int) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value * TENTHS_PER_DEVICE
    if isinstance(value, float):
        scaled = value * TENTHS_PER_DEVICE
        if not math.isfinite(scaled):  # 1e308 * 10 overflows to inf
            return None
        nearest = round(scaled)
        return nearest if abs(scaled - nearest) < _FLOAT_TOLERANCE else None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    if not number.is_finite():
        return None
    tenths = number * TENTHS_PER_DEVICE
    return int(tenths) if tenths == tenths.to_integral_value() else None


_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])", re.IGNORECASE)


def parse_duration(value: str | float | int | None) -> int:
    """Seconds from ``90``, ``"90"``, ``"90s"``, ``"30m"``, ``"2h"``, ``"1h30m"``.

    ``None`` gives the default (one hour). The result lies in 60-86 400 s or `InvalidArgument`
    is raised with the value and the rule.
    """
    if value is None:
        return DEFAULT_DURATION_S
    seconds = _duration_seconds(value)
    if seconds is None or not MIN_DURATION_S <= seconds <= MAX_DURATION_S:
        raise InvalidArgument(f"Invalid duration: {_show(value)}. {DURATION_RULE}")
    return seconds


def _duration_seconds(value: str | float | int) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):  # exact; math.isfinite(10**400) would overflow
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value == int(value) else None
    text = value.strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    if not text or _DURATION_PART.sub("", text).strip():
        return None
    total = sum(float(n) * _UNIT_SECONDS[u.lower()] for n, u in _DURATION_PART.findall(text))
    return int(total) if total == int(total) else None


def format_duration(seconds: float) -> str:
    """``5400`` -> ``"1h30m"``; used in tables and messages."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3_600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return "".join(parts) or "0s"
