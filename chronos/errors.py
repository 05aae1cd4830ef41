"""Errors raised by Chronos.

Chronos imports nothing else of the project, so it carries its own small tree; every class names
the HTTP status (and CLI exit code) it stands for, and the gateway maps them onto the
``CumulusError`` tree at its boundary by that status::

    ChronosError
    ├── InvalidArgument      400  bad amount, duration, device or id syntax
    ├── NotFound             404  no such partition or device
    ├── PartitionEnded       410  the partition was already released or has expired
    ├── ResourceExhausted    429  nothing fits now (carries ``retry_after``)
    └── StateUnavailable     503  the state file is locked, corrupt or unwritable
"""

from __future__ import annotations


class ChronosError(Exception):
    """Base of every error Chronos raises on purpose. ``str(exc)`` is one line for a human."""

    status: int = 500
    exit_code: int = 1


class InvalidArgument(ChronosError, ValueError):
    """A value given by the caller breaks a rule; the message names the value and the rule."""

    status = 400
    exit_code = 2


class NotFound(ChronosError, LookupError):
    """The partition or device named does not exist."""

    status = 404
    exit_code = 3


class PartitionEnded(ChronosError):
    """The partition exists but was released or has expired."""

    status = 410
    exit_code = 3


class ResourceExhausted(ChronosError):
    """No device has the capacity asked for right now."""

    status = 429
    exit_code = 4

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StateUnavailable(ChronosError):
    """The durable store cannot be used: locked past the timeout, corrupt or unwritable."""

    status = 503
    exit_code = 5
