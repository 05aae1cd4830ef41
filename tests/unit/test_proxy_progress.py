"""Progress lines in the cells waiting for the remote kernel: every waiting cell sees them,
lines worth keeping reach the first cell that comes later, and kept lines go out first."""

from __future__ import annotations

from typing import Any

import pytest

from cumulus_jupyter.kernel.progress import Progress

pytestmark = pytest.mark.unit


class Cells:
    """What each cell showed on stderr, in order."""

    def __init__(self) -> None:
        self.shown: list[tuple[str, str]] = []

    def stderr(self, text: str, parent: dict[str, Any]) -> None:
        self.shown.append((parent["msg_id"], text))


def cell(msg_id: str) -> dict[str, Any]:
    return {"msg_id": msg_id, "msg_type": "execute_request"}


def test_every_waiting_cell_sees_each_line() -> None:
    cells = Cells()
    progress = Progress(cells.stderr)
    progress.wait_in(cell("a"))
    progress.wait_in(cell("b"))
    progress.line("waiting for a partition: queue position 1")
    assert cells.shown == [
        ("a", "Cumulus: waiting for a partition: queue position 1\n"),
        ("b", "Cumulus: waiting for a partition: queue position 1\n"),
    ]
    assert not progress.kept


def test_with_no_cell_waiting_only_lines_worth_keeping_are_kept() -> None:
    cells = Cells()
    progress = Progress(cells.stderr)
    progress.line("starting the remote kernel, 1 s")
    progress.line("partition p-1 on gpu0 ready")
    progress.line("synced 2 files", keep=True)
    assert cells.shown == []
    progress.show_kept(cell("first"))
    assert cells.shown == [
        ("first", "Cumulus: partition p-1 on gpu0 ready\nCumulus: synced 2 files\n")
    ]
    assert not progress.kept
    progress.show_kept(cell("second"))
    assert len(cells.shown) == 1


def test_lines_kept_before_a_cell_came_go_out_before_later_ones() -> None:
    cells = Cells()
    progress = Progress(cells.stderr)
    progress.line("partition p-1 on gpu0 ready")
    progress.wait_in(cell("a"))
    progress.line("synced 2 files", keep=True)
    assert cells.shown == [
        ("a", "Cumulus: partition p-1 on gpu0 ready\n"),
        ("a", "Cumulus: synced 2 files\n"),
    ]
    assert not progress.kept


def test_kept_lines_go_to_the_first_waiting_cell_only() -> None:
    cells = Cells()
    progress = Progress(cells.stderr)
    progress.line("partition p-1 on gpu0 ready")
    progress.wait_in(cell("a"))
    progress.wait_in(cell("b"))
    progress.announce_to_waiting()
    assert cells.shown == [("a", "Cumulus: partition p-1 on gpu0 ready\n")]


def test_after_the_kernel_is_ready_lines_are_no_cells() -> None:
    cells = Cells()
    progress = Progress(cells.stderr)
    progress.wait_in(cell("a"))
    progress.stop_waiting()
    progress.line("could not sync /x: boom", keep=True)
    assert cells.shown == []
    assert progress.kept
