"""Progress lines ("waiting for a partition ...", "partition ... ready", "synced ...") shown in
the cells that wait for the remote kernel.

`Progress` holds the cells waiting and the lines worth keeping for the first cell when none was
waiting yet; lines kept go out before any later one, so a cell reads them in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Header = dict[str, Any]


class Progress:
    """Lines for the waiting cells; ``stderr(text, parent)`` shows text in cell ``parent``."""

    def __init__(self, stderr: Callable[[str, Header], None]) -> None:
        self._stderr = stderr
        self._waiting: list[Header] = []  # execute requests held until the kernel is ready
        self._kept = ""  # "partition p-... on gpu0 ready", for a first cell that missed it

    def wait_in(self, parent: Header) -> None:
        """Execute request ``parent`` waits for the kernel: show it the lines from now on."""
        self._waiting.append(parent)

    def stop_waiting(self) -> None:
        """The kernel is ready (or will never be): later lines are no cell's."""
        self._waiting.clear()

    def line(self, text: str, keep: bool = False) -> None:
        """Show a line in the cells waiting for the kernel; a line worth keeping (``keep``, or
        one saying "ready") is kept for the first cell when none is waiting yet."""
        self.announce_to_waiting()
        for parent in self._waiting:
            self._stderr(f"Cumulus: {text}\n", parent)
        if not self._waiting and (keep or "ready" in text):
            self._kept += f"Cumulus: {text}\n"

    @property
    def kept(self) -> bool:
        """Whether lines are kept for the next cell."""
        return bool(self._kept)

    def show_kept(self, parent: Header) -> None:
        """Show the lines kept in cell ``parent`` (the first cell says where it runs)."""
        if self._kept:
            self._stderr(self._kept, parent)
            self._kept = ""

    def announce_to_waiting(self) -> None:
        """Show the lines kept in the first waiting cell, if one waits."""
        if self._waiting:
            self.show_kept(self._waiting[0])
