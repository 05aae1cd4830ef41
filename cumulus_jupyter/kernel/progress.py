"""Progress lines ("waiting for a partition ...", "partition ... ready", "synced ...") shown in
the cells that wait for the remote kernel.

Each cell shows Cumulus's lines as one display (muted, never stderr: they are news, not
errors), updated in place: the lines kept, then the latest passing one ("waiting ...",
"starting ..."), which the next line replaces. `Progress` holds the cells waiting and the lines
worth keeping for the first cell when none was waiting yet; lines kept go out before any later
one, so a cell reads them in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cumulus_jupyter.frontend import PASSING, status_bundle

Header = dict[str, Any]


class _Cell:
    def __init__(self, parent: Header) -> None:
        self.parent = parent
        self.display_id = f"cumulus-{parent.get('msg_id', '')}"
        self.kept: list[str] = []
        self.passing = ""
        self.shown = False

    @property
    def lines(self) -> list[str]:
        return [*self.kept, *([self.passing] if self.passing else [])]


class Progress:
    """Lines for the waiting cells; ``show(parent, display_id, data, update)`` shows a display
    in cell ``parent`` (``update``: replace the one shown there before)."""

    def __init__(self, show: Callable[[Header, str, dict[str, Any], bool], None]) -> None:
        self._show = show
        self._waiting: list[_Cell] = []  # execute requests held until the kernel is ready
        self._kept: list[str] = []  # "partition p-... on gpu0 ready", for a first cell

    def wait_in(self, parent: Header) -> None:
        """Execute request ``parent`` waits for the kernel: show it the lines from now on."""
        self._waiting.append(_Cell(parent))

    def stop_waiting(self) -> None:
        """The kernel is ready (or will never be): later lines are no cell's."""
        self._waiting.clear()

    def line(self, text: str, keep: bool = False) -> None:
        """Show a line in the cells waiting for the kernel; a line worth keeping (``keep``, or
        one saying "ready") is kept for the first cell when none is waiting yet."""
        self.announce_to_waiting()
        for cell in self._waiting:
            self._add(cell, text)
            self._render(cell)
        if not self._waiting and (keep or "ready" in text):
            self._kept.append(text)

    @staticmethod
    def _add(cell: _Cell, text: str) -> None:
        if text.startswith(PASSING):
            cell.passing = text
        else:
            cell.kept.append(text)
            cell.passing = ""

    def _render(self, cell: _Cell) -> None:
        self._show(cell.parent, cell.display_id, status_bundle(cell.lines), cell.shown)
        cell.shown = True

    @property
    def kept(self) -> bool:
        """Whether lines are kept for the next cell."""
        return bool(self._kept)

    def show_kept(self, parent: Header) -> None:
        """Show the lines kept in cell ``parent`` (the first cell says where it runs)."""
        waiting = [c for c in self._waiting if c.parent is parent]
        self._announce(waiting[0] if waiting else _Cell(parent))

    def _announce(self, cell: _Cell) -> None:
        if self._kept:
            for text in self._kept:
                self._add(cell, text)
            self._kept = []
            self._render(cell)

    def announce_to_waiting(self) -> None:
        """Show the lines kept in the first waiting cell, if one waits."""
        if self._waiting:
            self._announce(self._waiting[0])
