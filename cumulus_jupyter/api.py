"""The function API: run a function in a GPU partition from any Python program.

::

    from cumulus_jupyter import run, remote

    loss = run(train, data, gpu=0.5, duration="1h")

    @remote(gpu=0.5)
    def embed(texts): ...
    vectors = embed(texts)           # runs remotely; the result comes back

The function, its arguments and its result travel like ``%%cumulus`` variables (cloudpickle,
pickle-5 buffers). Each call takes a partition for its own session and releases it after, unless
``session=`` names one to keep (it is then reused by later calls with the same name).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from cumulus_jupyter.connection import GatewaySettings
from cumulus_jupyter.errors import RemoteError
from cumulus_jupyter.session import RemoteSession

F = TypeVar("F", bound=Callable[..., Any])
_kept: dict[str, RemoteSession] = {}


@atexit.register
def _release_kept() -> None:
    """Kept sessions end with the program: their partitions go back at once, not at expiry."""
    for session in list(_kept.values()):
        with contextlib.suppress(Exception):
            session.release()
    _kept.clear()


CALL = "__cumulus_result__ = __cumulus_fn__(*__cumulus_args__, **__cumulus_kwargs__)"


def run(
    fn: Callable[..., Any],
    *args: Any,
    gpu: str | float = 0.5,
    duration: str | int = "1h",
    session: str | None = None,
    gateway: str | None = None,
    token: str | None = None,
    **kwargs: Any,
) -> Any:
    """``fn(*args, **kwargs)`` in a partition of ``gpu`` for ``duration``; returns its result."""
    remote_session = _kept.get(session) if session else None
    if remote_session is None or not remote_session.alive:
        remote_session = RemoteSession(
            session or f"run-{fn.__name__}", GatewaySettings.resolve(gateway, token)
        )
        remote_session.start(
            str(gpu),
            str(duration),
            lambda line: print(f"Cumulus: {line}", file=sys.stderr, flush=True),
        )
        if session:
            _kept[session] = remote_session
    try:
        remote_session.push(
            {"__cumulus_fn__": fn, "__cumulus_args__": args, "__cumulus_kwargs__": kwargs},
            force=True,
        )
        reply = remote_session.execute(CALL, _forward_output)["content"]
        if reply.get("status") == "error":
            raise RemoteError.from_reply(reply)
        values, _ = remote_session.pull(["__cumulus_result__"])
        return values["__cumulus_result__"]
    finally:
        if not session:
            remote_session.release()


def _forward_output(message: dict[str, Any]) -> None:
    if message["msg_type"] == "stream":
        stream = sys.stderr if message["content"].get("name") == "stderr" else sys.stdout
        stream.write(message["content"].get("text", ""))
        stream.flush()


def remote(
    gpu: str | float = 0.5, duration: str | int = "1h", session: str | None = None
) -> Callable[[F], F]:
    """Decorator: calling the function runs it remotely (see `run`)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            return run(fn, *args, gpu=gpu, duration=duration, session=session, **kwargs)

        return call  # type: ignore[return-value]

    return wrap
