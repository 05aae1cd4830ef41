"""Progress lines in the cells waiting for the remote kernel: every waiting cell sees them as
one display updated in place, lines worth keeping reach the first cell that comes later, and
kept lines go out first."""

from __future__ import annotations

from typing import Any

import pytest

from cumulus_jupyter.kernel.progress import Progress

pytestmark = pytest.mark.unit


class Cells:
    """What each cell's Cumulus display showed, in order: (cell, display id, text, update)."""

    def __init__(self) -> None:
        self.shown: list[tuple[str, str, str, bool]] = []

    def show(
        self, parent: dict[str, Any], display_id: str, data: dict[str, Any], update: bool
    ) -> None:
        assert "Cumulus" in data["text/html"] and data["text/html"].startswith("<pre")
        self.shown.append((parent["msg_id"], display_id, data["text/plain"], update))

    def texts(self) -> list[tuple[str, str]]:
        return [(cell, text) for cell, _, text, _ in self.shown]


def cell(msg_id: str) -> dict[str, Any]:
    return {"msg_id": msg_id, "msg_type": "execute_request"}


def test_every_waiting_cell_sees_each_line_in_its_own_display_updated_in_place() -> None:
    cells = Cells()
    progress = Progress(cells.show)
    progress.wait_in(cell("a"))
    progress.wait_in(cell("b"))
    progress.line("waiting for a partition: queue position 2, waited 1 s")
    progress.line("waiting for a partition: queue position 1, waited 2 s")
    progress.line("partition p-1 on gpu0 ready")
    assert cells.shown == [
        ("a", "cumulus-a", "Cumulus: waiting for a partition: queue position 2, waited 1 s", False),
        ("b", "cumulus-b", "Cumulus: waiting for a partition: queue position 2, waited 1 s", False),
        ("a", "cumulus-a", "Cumulus: waiting for a partition: queue position 1, waited 2 s", True),
        ("b", "cumulus-b", "Cumulus: waiting for a partition: queue position 1, waited 2 s", True),
        ("a", "cumulus-a", "Cumulus: partition p-1 on gpu0 ready", True),
        ("b", "cumulus-b", "Cumulus: partition p-1 on gpu0 ready", True),
    ]
    assert not progress.kept


def test_with_no_cell_waiting_only_lines_worth_keeping_are_kept() -> None:
    cells = Cells()
    progress = Progress(cells.show)
    progress.line("starting the remote kernel, 1 s")
    progress.line("partition p-1 on gpu0 ready")
    progress.line("synced 2 files", keep=True)
    assert cells.shown == []
    progress.show_kept(cell("first"))
    assert cells.shown == [
        (
            "first",
            "cumulus-first",
            "Cumulus: partition p-1 on gpu0 ready\nCumulus: synced 2 files",
            False,
        )
    ]
    assert not progress.kept
    progress.show_kept(cell("second"))
    assert len(cells.shown) == 1


def test_lines_kept_before_a_cell_came_go_out_before_later_ones() -> None:
    cells = Cells()
    progress = Progress(cells.show)
    progress.line("partition p-1 on gpu0 ready")
    progress.wait_in(cell("a"))
    progress.line("synced 2 files", keep=True)
    assert cells.texts() == [
        ("a", "Cumulus: partition p-1 on gpu0 ready"),
        ("a", "Cumulus: partition p-1 on gpu0 ready\nCumulus: synced 2 files"),
    ]
    assert [update for *_, update in cells.shown] == [False, True]
    assert not progress.kept


def test_kept_lines_go_to_the_first_waiting_cell_only() -> None:
    cells = Cells()
    progress = Progress(cells.show)
    progress.line("partition p-1 on gpu0 ready")
    progress.wait_in(cell("a"))
    progress.wait_in(cell("b"))
    progress.announce_to_waiting()
    assert cells.texts() == [("a", "Cumulus: partition p-1 on gpu0 ready")]


def test_after_the_kernel_is_ready_lines_are_no_cells() -> None:
    cells = Cells()
    progress = Progress(cells.show)
    progress.wait_in(cell("a"))
    progress.stop_waiting()
    progress.line("could not sync /x: boom", keep=True)
    assert cells.shown == []
    assert progress.kept
