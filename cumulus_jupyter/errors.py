"""The one error tree users of Cumulus meet, each class with the HTTP status it stands for.

::

    CumulusError                  500
    ├── InvalidArgument           400  a bad amount, duration, name or option
    ├── Unauthenticated           401  missing or wrong token
    ├── PermissionDenied          403  the token is valid but may not do this
    ├── NotFound                  404  no such kernel, partition or session
    ├── PartitionExpired          410  the partition ended (expired or released)
    ├── ResourceExhausted         429  nothing fits now; ``retry_after`` says when to retry
    ├── KernelDied                500  the remote kernel process died under a request
    ├── Internal                  500  a bug on our side
    ├── Unavailable               503  the gateway or its state is unreachable
    │   └── DataChannelError      502  a bulk transfer to or from a kernel was refused or broke off
    └── DeadlineExceeded          504  waited past the launch or request timeout

Foreign errors (Chronos, httpx, zmq, sqlite, docker) are mapped onto this tree at one boundary
per layer, by status code (`error_for_status`), and raised ``from`` the original.
"""

from __future__ import annotations


class CumulusError(Exception):
    """Base of every error Cumulus raises on purpose; ``str(exc)`` is one line for a human."""

    status: int = 500

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidArgument(CumulusError, ValueError):
    status = 400


class Unauthenticated(CumulusError):
    status = 401


class PermissionDenied(CumulusError):
    status = 403


class NotFound(CumulusError, LookupError):
    status = 404


class PartitionExpired(CumulusError):
    status = 410


class ResourceExhausted(CumulusError):
    status = 429


class KernelDied(CumulusError):
    """The remote kernel died while working (its variables are gone); not a partition end."""

    status = 500


class Internal(CumulusError):
    status = 500


class Unavailable(CumulusError):
    status = 503


class DataChannelError(Unavailable):
    """The data path between the gateway and a kernel refused or broke off a transfer."""

    status = 502


class DeadlineExceeded(CumulusError, TimeoutError):
    status = 504


_BY_STATUS: dict[int, type[CumulusError]] = {
    cls.status: cls
    for cls in (
        InvalidArgument, Unauthenticated, PermissionDenied, NotFound, PartitionExpired,
        ResourceExhausted, Unavailable, DeadlineExceeded, Internal,
    )
}  # fmt: skip


def error_for_status(status: int) -> type[CumulusError]:
    """The class for an HTTP status: exact match, else `InvalidArgument` for other 4xx (409
    from a no-wait launch maps to `ResourceExhausted`), else `Internal`."""
    if status == 409:
        return ResourceExhausted
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return InvalidArgument if 400 <= status < 500 else Internal


__all__ = [
    "CumulusError",
    "DataChannelError",
    "DeadlineExceeded",
    "Internal",
    "InvalidArgument",
    "KernelDied",
    "NotFound",
    "PartitionExpired",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "error_for_status",
]
