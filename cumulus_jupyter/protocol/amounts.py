"""The grammar of GPU amounts and durations a kernel request may carry (``KERNEL_GPU``,
``KERNEL_DURATION``), for clients that check input before any request.

Chronos (`chronos.amount`) is the authority and imports nothing of ours; the client must not
import Chronos (it pulls SQLite and psutil). So the grammar is spelled twice, and a unit test
(``tests/unit/test_amounts.py``) holds the two to the same answers and messages.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

from cumulus_jupyter.errors import InvalidArgument

AMOUNT_RULE = "Must be 0.1-0.9 or whole number 1-8"
DURATION_RULE = 'Must be 60 s to 86400 s (24h), e.g. 90, "30m", "2h"'
MIN_DURATION_S, MAX_DURATION_S, DEFAULT_DURATION_S = 60, 86_400, 3_600
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])", re.IGNORECASE)


def _show(value: object) -> str:
    return value.strip() if isinstance(value, str) else repr(value)


def _tenths(value: str | float) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value * 10
    if isinstance(value, float):
        scaled = value * 10
        if not math.isfinite(scaled):
            return None
        return round(scaled) if abs(scaled - round(scaled)) < 1e-9 else None
    try:
        number = Decimal(str(value).strip()) * 10
    except InvalidOperation:
        return None
    return int(number) if number.is_finite() and number == number.to_integral_value() else None


def parse_amount(value: str | float) -> float:
    """``0.5``, ``"0.5"``, ``2``: the amount in devices; `InvalidArgument` with the rule."""
    tenths = _tenths(value)
    if tenths is None or not (1 <= tenths <= 9 or (tenths % 10 == 0 and 10 <= tenths <= 80)):
        raise InvalidArgument(f"Invalid GPU amount: {_show(value)}. {AMOUNT_RULE}")
    return tenths / 10


def _seconds(value: str | float) -> int | None:
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


def parse_duration(value: str | float | None) -> int:
    """Seconds from ``90``, ``"30m"``, ``"1h30m"`` (None: one hour); `InvalidArgument` outside
    60-86 400 s."""
    if value is None:
        return DEFAULT_DURATION_S
    seconds = _seconds(value)
    if seconds is None or not MIN_DURATION_S <= seconds <= MAX_DURATION_S:
        raise InvalidArgument(f"Invalid duration: {_show(value)}. {DURATION_RULE}")
    return seconds


def format_duration(seconds: float) -> str:
    """``5400`` -> ``"1h30m"``."""
    hours, rest = divmod(max(0, int(seconds)), 3_600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return "".join(parts) or "0s"
