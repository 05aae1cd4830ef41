"""One background event loop for the synchronous APIs (the magic, `run`, the CLI).

The magic runs inside ipykernel's own event loop, where ``asyncio.run`` is forbidden; so the
async core (`RemoteKernel`) lives on this loop, in its own daemon thread, and sync callers wait
on `call`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="cumulus-loop", daemon=True).start()
            _loop = loop
        return _loop


def call(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on the background loop and wait for its result in this thread."""
    future = asyncio.run_coroutine_threadsafe(coro, background_loop())
    try:
        return future.result(timeout)
    except BaseException:
        future.cancel()
        raise
