"""The function API: run a function in a GPU partition from any Python program.

::

    from cumulus_jupyter import run, remote

    loss = run(train, data, gpu_memory=0.5, duration="1h", requirements=["numpy"])

    @remote(gpu=0.5, timeout=600)
    def embed(texts): ...
    vectors = embed(texts)           # runs remotely; the result comes back

Both take `CumulusClient.run`'s options (`cumulus_jupyter.client`, the one implementation),
keyword-only, and ``server_url=`` (or ``gateway=``, its older name) and ``token=`` for the
client, which otherwise comes from ``CUMULUS_GATEWAY_URL`` and ``CUMULUS_TOKEN``.

The function's own keyword arguments: ``fn_kwargs={...}`` always works (and is the only way
for one named like an option, say ``gpu``). For today's callers, `run` also passes on any
other keyword the function's signature accepts (``run(train, data, scale=2)``); a keyword
that is neither an option nor the function's is refused before anything starts. A call
through ``@remote`` passes every keyword to the function: the options are the decorator's.
"""

from __future__ import annotations

import atexit
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, Never, TypeVar, overload

from cumulus_jupyter.client import (
    OPTIONS,
    CallOptions,
    CumulusClient,
    check_call,
    keyword_arguments,
    refuse_unknown,
)
from cumulus_jupyter.connection import GatewaySettings
from cumulus_jupyter.errors import InvalidArgument

F = TypeVar("F", bound=Callable[..., Any])
_CLIENT_OPTIONS = ("server_url", "gateway", "token")
_clients: dict[GatewaySettings, CumulusClient] = {}


@atexit.register
def _close_clients() -> None:
    """Kept sessions end with the program: their partitions go back at once, not at expiry."""
    for client in list(_clients.values()):
        client.close()
    _clients.clear()


def client_for(
    server_url: str | None = None, gateway: str | None = None, token: str | None = None
) -> CumulusClient:
    """The program's client for that gateway (made once: it keeps the named sessions)."""
    if server_url is not None and gateway is not None and server_url != gateway:
        raise InvalidArgument("Give server_url= or gateway= (its older name), not both")
    settings = GatewaySettings.resolve(server_url or gateway, token)
    if settings not in _clients:
        _clients[settings] = CumulusClient(settings.url, settings.token)
    return _clients[settings]


def run(
    fn: Callable[..., Any],
    *args: Any,
    gpu_memory: str | float | None = None,
    gpu: str | float | None = None,
    duration: str | int = "1h",
    requirements: str | Sequence[str] | None = None,
    timeout: float | None = None,
    max_retries: int | None = None,
    session: str | None = None,
    fn_kwargs: dict[str, Any] | None = None,
    server_url: str | None = None,
    gateway: str | None = None,
    token: str | None = None,
    **kwargs: Any,
) -> Any:
    """``fn(*args, **fn_kwargs)`` in a partition of ``gpu_memory`` (or ``gpu``; default 0.5)
    for ``duration``; returns its result. See `CumulusClient.run` for the options."""
    options = CallOptions.parse(
        gpu_memory=gpu_memory, gpu=gpu, duration=duration, requirements=requirements,
        timeout=timeout, max_retries=max_retries, session=session,
    )  # fmt: skip
    unknown = {k: v for k, v in kwargs.items() if not _accepts(fn, k)}
    refuse_unknown("cumulus_jupyter.run", unknown, (*OPTIONS, *_CLIENT_OPTIONS))
    own = keyword_arguments(fn_kwargs)
    twice = sorted(set(own) & set(kwargs))
    if twice:
        raise InvalidArgument(f"{twice[0]}= is given both in fn_kwargs and as a keyword")
    own |= kwargs
    check_call(fn, args, own)
    return client_for(server_url, gateway, token).call(fn, args, own, options)


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (True when it cannot be known)."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return True
    found = parameters.get(name)
    return found is not None and found.kind is not found.POSITIONAL_ONLY


@overload
def remote(fn: F, /) -> F: ...
@overload
def remote(
    fn: None = None,
    /,
    *,
    gpu_memory: str | float | None = None,
    gpu: str | float | None = None,
    duration: str | int = "1h",
    requirements: str | Sequence[str] | None = None,
    timeout: float | None = None,
    max_retries: int | None = None,
    session: str | None = None,
    server_url: str | None = None,
    gateway: str | None = None,
    token: str | None = None,
) -> Callable[[F], F]: ...
def remote(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    gpu_memory: str | float | None = None,
    gpu: str | float | None = None,
    duration: str | int = "1h",
    requirements: str | Sequence[str] | None = None,
    timeout: float | None = None,
    max_retries: int | None = None,
    session: str | None = None,
    server_url: str | None = None,
    gateway: str | None = None,
    token: str | None = None,
    **unknown: Never,
) -> Any:
    """Decorator (``@remote`` or ``@remote(gpu=0.5, ...)``): calling the function runs it
    remotely with these options (see `run`), every argument of the call going to it. The
    options are checked here, when the function is decorated."""
    if fn is not None and not callable(fn):
        raise InvalidArgument(
            f"remote's options are keyword-only: @remote(gpu={fn!r}), not @remote({fn!r})"
        )
    refuse_unknown("remote", unknown, (*OPTIONS[:-1], *_CLIENT_OPTIONS))
    options = CallOptions.parse(
        gpu_memory=gpu_memory, gpu=gpu, duration=duration, requirements=requirements,
        timeout=timeout, max_retries=max_retries, session=session,
    )  # fmt: skip

    def wrap(func: F) -> F:
        @functools.wraps(func)
        def call(*args: Any, **kwargs: Any) -> Any:
            check_call(func, args, kwargs)
            return client_for(server_url, gateway, token).call(func, args, kwargs, options)

        return call  # type: ignore[return-value]

    return wrap(fn) if fn is not None else wrap
