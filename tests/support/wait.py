"""The one way tests wait for something: poll a predicate until it holds, with a deadline that
only guards against a hang (tests assert on behaviour, never on how long it took)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
POLL_S = 0.05


def wait_until(predicate: Callable[[], T], timeout: float = 60, what: str = "condition") -> T:
    """``predicate()``'s first truthy value; `AssertionError` naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL_S)


async def wait_until_async(
    predicate: Callable[[], T | Awaitable[T]], timeout: float = 60, what: str = "condition"
) -> T:
    """`wait_until` for a coroutine: ``predicate`` may be sync or async."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(POLL_S)
