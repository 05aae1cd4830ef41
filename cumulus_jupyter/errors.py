"""The one error tree users of Cumulus meet: each class with its HTTP status and CLI exit code.

::

    CumulusError                  500  1
    ├── InvalidArgument           400  2  a bad amount, duration, name, option or body
    │   └── TooLarge              413  2  a body or transfer over the gateway's limit
    ├── Unauthenticated           401  6  missing or wrong token
    ├── PermissionDenied          403  7  the token is valid but may not do this
    ├── NotFound                  404  3  no such kernel, partition, job or session
    ├── Conflict                  409 10  refused because of others' claims (an extension that
    │                                     would delay a queued request's reserved start)
    ├── PartitionExpired          410  3  the partition ended (expired or released)
    ├── ResourceExhausted         429  4  nothing fits now; ``retry_after`` says when to retry
    ├── KernelDied                500  9  the remote kernel process died under a request
    ├── RemoteError               500  1  the user's code raised in the remote kernel
    ├── Internal                  500  1  a bug on our side
    ├── Unavailable               503  5  the gateway, its state or a kernel cannot be reached
    │   └── DataChannelError      502  5  a bulk transfer to or from a kernel was refused or broke
    └── DeadlineExceeded          504  8  waited past the launch or request timeout

Foreign errors are mapped onto this tree at one boundary per layer and raised ``from`` the
original: Chronos's own tree in the gateway (`gateway.errors`), HTTP statuses in the client
(`error_for_status`), httpx in `cumulus_jupyter.connection`. Both CLIs exit with the class's
``exit_code`` (Chronos's classes carry the same codes).
"""

from __future__ import annotations

import functools


class CumulusError(Exception):
    """Base of every error Cumulus raises on purpose; ``str(exc)`` is one line for a human."""

    status: int = 500
    exit_code: int = 1

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidArgument(CumulusError, ValueError):
    status = 400
    exit_code = 2


class TooLarge(InvalidArgument):
    status = 413


class Unauthenticated(CumulusError):
    status = 401
    exit_code = 6


class PermissionDenied(CumulusError):
    status = 403
    exit_code = 7


class NotFound(CumulusError, LookupError):
    status = 404
    exit_code = 3


class Conflict(CumulusError):
    """The request is well-formed and allowed, but others' claims forbid it now (extending a
    partition that a queued request's reserved start is waiting for)."""

    status = 409
    exit_code = 10


class PartitionExpired(CumulusError):
    status = 410
    exit_code = 3


class ResourceExhausted(CumulusError):
    status = 429
    exit_code = 4


class KernelDied(CumulusError):
    """The remote kernel died while working (its variables are gone); not a partition end."""

    status = 500
    exit_code = 9


class RemoteError(CumulusError):
    """The user's code raised in the remote kernel. ``str()`` is the remote exception's line;
    the remote traceback is ``traceback`` (as the kernel sent it), shown by IPython in place of
    a local one (`_render_traceback_`) and by plain Python after the exception, as a note."""

    def __init__(self, ename: str, evalue: str, traceback: list[str] | None = None) -> None:
        super().__init__(f"{ename}: {evalue}")
        self.ename, self.evalue, self.traceback = ename, evalue, list(traceback or [])
        if self.traceback:
            self.add_note("\n".join(_strip_ansi(line) for line in self.traceback))

    @classmethod
    def from_reply(cls, content: dict[str, object]) -> RemoteError:
        """From an ``execute_reply`` (or ``error`` message) content."""
        traceback = content.get("traceback")
        return cls(
            str(content.get("ename", "Error")),
            str(content.get("evalue", "")),
            [str(line) for line in traceback] if isinstance(traceback, list) else [],
        )

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a local trace
        shown = self.traceback or [f"{self.ename}: {self.evalue}"]
        return [*shown, f"(raised in the remote kernel: {self.ename})"]


class Internal(CumulusError):
    status = 500


class Unavailable(CumulusError):
    status = 503
    exit_code = 5


class DataChannelError(Unavailable):
    """The data path between the gateway and a kernel refused or broke off a transfer; the
    client falls back to sending the values in messages."""

    status = 502


class DeadlineExceeded(CumulusError, TimeoutError):
    status = 504
    exit_code = 8


class _RemoteErrorInCell(RemoteError):
    """A `RemoteError` as a notebook cell shows it: ``str()`` is the remote value alone, so the
    cell's error reply reads ``ename`` / ``evalue`` as the remote kernel's did."""

    def __str__(self) -> str:
        return self.evalue


@functools.cache
def _remote_class(ename: str) -> type[RemoteError]:
    """A `RemoteError` subclass named as the remote exception (``ZeroDivisionError``): IPython
    and ipykernel name a cell's error after its exception's class."""
    name = ename if ename.isidentifier() else "RemoteError"
    return type(name, (_RemoteErrorInCell,), {"__module__": "cumulus_jupyter.remote"})


def in_cell(exc: CumulusError, *hints: str) -> CumulusError:
    """What a magic raises for ``exc``: the cell fails, as a local cell failing would (its
    reply ``error``, so nbclient and papermill stop), with no local traceback. A remote
    exception keeps the remote kernel's name, value and traceback (a remote ``SyntaxError`` is
    ename ``SyntaxError``); any other `CumulusError` (a refused cell: a bad option, a name that
    cannot be sent, a push over the cap, an expired partition) shows as its one line, its class
    and message, then ``hints``."""
    if isinstance(exc, RemoteError):
        return _remote_class(exc.ename)(exc.ename, exc.evalue, exc.traceback)
    lines = [f"{type(exc).__name__}: {exc}", *hints]
    exc._render_traceback_ = lambda: lines  # type: ignore[attr-defined]
    return exc


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


_BY_STATUS: dict[int, type[CumulusError]] = {
    cls.status: cls
    for cls in (
        InvalidArgument, TooLarge, Unauthenticated, PermissionDenied, NotFound, PartitionExpired,
        ResourceExhausted, Internal, DataChannelError, Unavailable, DeadlineExceeded, Conflict,
    )
}  # fmt: skip


def error_for_status(status: int) -> type[CumulusError]:
    """The class an HTTP status stands for: the exact class, else `InvalidArgument` for any
    other 4xx, else `Internal`."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return InvalidArgument if 400 <= status < 500 else Internal


__all__ = [
    "Conflict",
    "CumulusError",
    "DataChannelError",
    "DeadlineExceeded",
    "Internal",
    "InvalidArgument",
    "KernelDied",
    "NotFound",
    "PartitionExpired",
    "PermissionDenied",
    "RemoteError",
    "ResourceExhausted",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
    "error_for_status",
    "in_cell",
]
