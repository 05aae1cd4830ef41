"""Where Chronos's errors become Cumulus errors: the one table, and the boundary that uses it.

Chronos imports nothing of ours, so it raises its own small tree (`chronos.errors`). The gateway
maps each of its classes onto the class of `cumulus_jupyter.errors` with the same HTTP status and
exit code, once, where it calls Chronos (the broker, the services' start-up, request parsing),
and `gateway.handlers.base` maps whatever slips through the same way::

    chronos.ChronosError        → Internal            500  1
    chronos.InvalidArgument     → InvalidArgument     400  2
    chronos.NotFound            → NotFound            404  3
    chronos.PartitionEnded      → PartitionExpired    410  3
    chronos.ResourceExhausted   → ResourceExhausted   429  4  (``retry_after`` kept)
    chronos.StateUnavailable    → Unavailable         503  5
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping

import chronos.errors as chronos_errors
from cumulus_jupyter.errors import (
    CumulusError,
    Internal,
    InvalidArgument,
    NotFound,
    PartitionExpired,
    ResourceExhausted,
    Unavailable,
)

FROM_CHRONOS: Mapping[type[chronos_errors.ChronosError], type[CumulusError]] = {
    chronos_errors.ChronosError: Internal,
    chronos_errors.InvalidArgument: InvalidArgument,
    chronos_errors.NotFound: NotFound,
    chronos_errors.PartitionEnded: PartitionExpired,
    chronos_errors.ResourceExhausted: ResourceExhausted,
    chronos_errors.StateUnavailable: Unavailable,
}


def from_chronos(exc: chronos_errors.ChronosError) -> CumulusError:
    """The `CumulusError` standing for ``exc`` (its nearest mapped class), caused by it."""
    cls = next(FROM_CHRONOS[c] for c in type(exc).__mro__ if c in FROM_CHRONOS)
    mapped = cls(str(exc), retry_after=getattr(exc, "retry_after", None))
    mapped.__cause__ = exc
    return mapped


class RefusalsAreAnswers(logging.Filter):
    """On the gateway's log: a record that carries a `CumulusError` or a Chronos error (a 429
    from a full device, a 400 from a bad amount) is a warning line without a traceback.

    jupyter_client logs any exception out of a kernel start at error level with its traceback
    (``KernelManager``'s pending-state wrapper, ``MultiKernelManager._add_kernel_when_ready``)
    before it reaches the handler that answers it; a refusal is the answer, not a crash."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, CumulusError | chronos_errors.ChronosError) and not isinstance(
            exc, Internal
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


@contextlib.contextmanager
def chronos_boundary() -> Iterator[None]:
    """Calls into Chronos inside this block raise Cumulus errors, ``from`` Chronos's own."""
    try:
        yield
    except chronos_errors.ChronosError as exc:
        raise from_chronos(exc) from exc
