"""The kernel's stdout and stderr: a flush with nothing to flush returns at once.

ipykernel's ``OutStream.flush`` hands every flush to the IOPub thread and waits for it to run,
whether or not anything was written: before each execute reply it flushes both streams, and
again before the ``idle`` status, so a cell that prints nothing waits four times on another
thread. On a loaded two-core host that cost a ``pass`` round trip 0.9 ms of 7.8 (measured with
jupyter_client against two kernels in turns: 7.83 ms, 6.94 ms without the waits); making two
waits of the four did not help (7.75 ms): it is the waiting, not the number of flushes.

Here a flush waits only when there is something it could be waiting for: a write not yet taken
by a flush (ipykernel's ``_flush_pending``, set by every write, or text in its buffers) or a
flush under way on the IOPub thread (counted around ``_flush``, which clears the pending flag
only while it runs). Otherwise every byte written before the call has already been handed to
the IOPub thread's queue by a flush that finished, which is all that ipykernel's wait
guarantees too (the queued sends, and the reply on the shell socket, are not ordered by it
either). The agent notes a cell's outputs as that flush hands them on
(`cumulus_jupyter.agent.inline`), so a reply still names the cell's last output.

A stream without those internals (another ipykernel, a user's own ``sys.stdout``) is left as
it is.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

_INSTALLED = "_cumulus_flush"
_INTERNALS = ("_flush", "_flush_pending", "_buffers", "pub_thread")


def install(streams: Iterable[Any] | None = None) -> None:
    """Make ``streams`` (``sys.stdout`` and ``sys.stderr``) flush without waiting when there is
    nothing to flush (idempotent)."""
    for stream in (sys.stdout, sys.stderr) if streams is None else streams:
        if all(hasattr(stream, name) for name in _INTERNALS) and not hasattr(stream, _INSTALLED):
            _Flusher(stream).install()


class _Flusher:
    """One stream's flush: ipykernel's own when something may be left to flush, else none."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.flush_waiting: Callable[[], None] = stream.flush
        self.flush_in_thread: Callable[[], None] = stream._flush
        self.under_way = 0
        self.lock = threading.Lock()

    def install(self) -> None:
        # instance attributes: ipykernel reads ``self._flush`` each time it schedules one
        self.stream._flush = self.flush_counted
        self.stream.flush = self.flush
        setattr(self.stream, _INSTALLED, self)

    def flush_counted(self) -> None:
        """ipykernel's ``_flush`` (on the IOPub thread), counted while it runs."""
        with self.lock:
            self.under_way += 1
        try:
            self.flush_in_thread()
        finally:
            with self.lock:
                self.under_way -= 1

    def flush(self) -> None:
        # in this order: a flush under way clears the pending flag only after it is counted
        if self.stream._flush_pending or self.under_way or self.stream._buffers:
            self.flush_waiting()
