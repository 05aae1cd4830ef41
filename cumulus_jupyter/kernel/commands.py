"""The ``%cumulus`` lines a Cumulus GPU kernel cell may hold, answered by the proxy itself: the
remote kernel has no such magic, and the partition is the gateway's business.

Only ``%cumulus extend DURATION`` (more time for the kernel's partition) is one; a cell that is
any other ``%cumulus`` line is answered with what is supported, and every other cell goes to the
remote kernel untouched. Pure parsing, no I/O.
"""

from __future__ import annotations

import re
import shlex

from cumulus_jupyter import partitions
from cumulus_jupyter.errors import InvalidArgument

_LINE = re.compile(r"%cumulus(?:\s|$)")


def command_of(code: str) -> list[str] | None:
    """The words after ``%cumulus`` when the cell is that one line (blank and comment lines
    aside); None for any other cell."""
    lines = [line.strip() for line in code.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if len(lines) != 1 or not _LINE.match(lines[0]):
        return None
    try:
        return shlex.split(lines[0], comments=True)[1:]
    except ValueError:
        return [lines[0]]  # unreadable: reported as not a command below


def extension(words: list[str]) -> str:
    """The DURATION of ``%cumulus extend DURATION`` (`InvalidArgument` saying what works)."""
    if words[:1] != ["extend"]:
        raise InvalidArgument(
            f"%cumulus {' '.join(words)} is not a command of the Cumulus GPU kernel, which "
            f"knows only: %cumulus extend DURATION (90, 30m, 2h). The other %cumulus commands "
            "belong to the %%cumulus magic in a local notebook"
        )
    return partitions.duration_of(words[1:])
