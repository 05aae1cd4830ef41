"""`cumulus_jupyter.kernel.commands`: which Cumulus GPU kernel cells the proxy answers itself
(``%cumulus extend DURATION``), and what it says about the others."""

from __future__ import annotations

import pytest

from cumulus_jupyter.errors import InvalidArgument
from cumulus_jupyter.kernel.commands import command_of, extension

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("code", "words"),
    [
        ("%cumulus extend 30m", ["extend", "30m"]),
        ("  %cumulus   extend 2h  \n", ["extend", "2h"]),
        ("# more time\n\n%cumulus extend 90  # for the last epoch\n", ["extend", "90"]),
        ("%cumulus", []),
        ("%cumulus status", ["status"]),
    ],
)
def test_a_cell_that_is_one_cumulus_line_is_a_command(code: str, words: list[str]) -> None:
    assert command_of(code) == words


@pytest.mark.parametrize(
    "code",
    [
        "x = 1",
        "%cumulus extend 30m\nx = 1",  # more than the line: the remote kernel's (it will say)
        "%cumulusx extend 30m",
        "print('%cumulus extend 30m')",
        "%%cumulus --gpu 0.5\nx = 1",
        "",
    ],
)
def test_other_cells_go_to_the_remote_kernel(code: str) -> None:
    assert command_of(code) is None


def test_extend_takes_one_duration_in_chronos_grammar() -> None:
    assert extension(["extend", "30m"]) == "30m"
    for bad in (["extend"], ["extend", "30m", "more"]):
        with pytest.raises(InvalidArgument, match=r"^Usage: %cumulus extend DURATION"):
            extension(bad)
    with pytest.raises(InvalidArgument, match=r"Invalid duration: soon\. Must be 60 s"):
        extension(["extend", "soon"])


def test_other_commands_say_what_the_kernel_knows() -> None:
    with pytest.raises(InvalidArgument) as info:
        extension(["status"])
    assert str(info.value).startswith(
        "%cumulus status is not a command of the Cumulus GPU kernel, which knows only: "
        "%cumulus extend DURATION"
    )
