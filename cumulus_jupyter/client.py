"""`CumulusClient`: the seed SDK's client, and the one implementation of the function API.

::

    from cumulus_jupyter import CumulusClient

    client = CumulusClient("http://gpu-host:8888", token="…")
    loss = client.run(train, data, gpu_memory=0.5, duration=3600, requirements=["numpy"])
    losses = client.map(train_one, configs, gpu=0.1)      # spread over as many 0.1s as fit

Options are keyword-only and checked before anything starts: an unknown option, an amount
outside the grammar (``gpu_memory=2.3``), a bad duration or arguments the function cannot take
raise `InvalidArgument` at once. The function's own keyword arguments go in ``fn_kwargs``,
so a function with a keyword named like an option (``gpu``) still gets it.

A call takes a partition for its own session and releases it after, unless ``session=`` names
one to keep (reused by later calls with that name, released by `close` or at exit). The
function, its arguments and the result ride inside the one execute request and its reply when
they are small (under `INLINE_MAX_BYTES`), so a call on a warm session is one round trip.

When the cluster is full a call waits in the gateway's queue (the default), or, with
``max_retries=N``, asks without waiting and retries up to N times with exponential backoff;
other errors are never retried. ``timeout`` bounds a call's wall time, queueing included:
past it the call raises `DeadlineExceeded`, its kernel is interrupted and its partition
released.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import difflib
import inspect
import itertools
import random
import shlex
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Never

from cumulus_jupyter import loop
from cumulus_jupyter.connection import GatewayClient, GatewaySettings
from cumulus_jupyter.errors import (
    CumulusError,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    RemoteError,
    ResourceExhausted,
)
from cumulus_jupyter.protocol import code as kernel_code
from cumulus_jupyter.protocol import env as names
from cumulus_jupyter.protocol.amounts import parse_amount, parse_duration
from cumulus_jupyter.protocol.messages import Message
from cumulus_jupyter.session import RemoteRef, RemoteSession

__all__ = ["CallOptions", "CumulusClient"]

#: the options of `CumulusClient.run` (and of `cumulus_jupyter.run` / ``@remote``)
OPTIONS = (
    "gpu_memory", "gpu", "duration", "requirements", "timeout", "max_retries", "session",
    "fn_kwargs",
)  # fmt: skip
MAP_OPTIONS = (*OPTIONS[:-2], "fn_kwargs", "max_parallel", "return_exceptions", "progress")

DEFAULT_GPU = 0.5
DEFAULT_MAP_GPU = 0.1
#: how long a request waits in the gateway's queue when no ``timeout`` bounds it
LAUNCH_TIMEOUT_S = 600.0
#: retries on a full cluster: the first waits this long, each next twice as long, up to the cap
RETRY_BASE_S, RETRY_MAX_S = 1.0, 30.0

_FN, _ARGS, _KWARGS, _RESULT = (
    "__cumulus_fn__", "__cumulus_args__", "__cumulus_kwargs__", "__cumulus_result__",
)  # fmt: skip
CALL = f"{_RESULT} = {_FN}(*{_ARGS}, **{_KWARGS})"


def _say(line: str) -> None:
    print(f"Cumulus: {line}", file=sys.stderr, flush=True)


# -- options ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallOptions:
    """A call's options, checked: the amount and duration as the gateway will read them."""

    gpu: str  # "0.5", "2"
    duration_s: int
    requirements: tuple[str, ...] = ()
    timeout: float | None = None
    max_retries: int | None = None
    session: str | None = None

    @classmethod
    def parse(
        cls,
        *,
        gpu_memory: str | float | None = None,
        gpu: str | float | None = None,
        duration: str | int | None = 3600,
        requirements: str | Sequence[str] | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        session: str | None = None,
        default_gpu: float = DEFAULT_GPU,
    ) -> CallOptions:
        """`InvalidArgument` naming the first option that is wrong, and why."""
        if gpu_memory is not None and gpu is not None:
            raise InvalidArgument("Give gpu_memory= or gpu= (its other name), not both")
        amount = parse_amount(gpu_memory if gpu_memory is not None else gpu or default_gpu)
        return cls(
            f"{amount:g}",
            parse_duration(duration),
            _requirements(requirements),
            _timeout(timeout),
            _retries(max_retries),
            _session(session),
        )


def _requirements(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """pip arguments: a list (``["numpy", "--no-index"]``) or one string split like a shell."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(shlex.split(value))
    if isinstance(value, Sequence) and all(isinstance(r, str) for r in value):
        return tuple(value)
    raise InvalidArgument(
        f"Invalid requirements: {value!r}. Give a list of pip arguments, e.g. ['numpy>=2']"
    )


def _timeout(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidArgument(f"Invalid timeout: {value!r}. Must be seconds > 0, or None")
    return float(value)


def _retries(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(
            f"Invalid max_retries: {value!r}. Must be a whole number >= 0, or None (wait in "
            "the gateway's queue)"
        )
    return value


def _session(value: str | None) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise InvalidArgument(f"Invalid session: {value!r}. Must be a name, or None")
    return value


def _positive(name: str, value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidArgument(f"Invalid {name}: {value!r}. Must be a whole number >= 1, or None")
    return value


def refuse_unknown(where: str, unknown: dict[str, Any], options: Sequence[str]) -> None:
    """`InvalidArgument` for keywords that are no option of ``where`` (with the closest one)."""
    if not unknown:
        return
    name = sorted(unknown)[0]
    close = difflib.get_close_matches(name, options, n=1)
    hint = f" (did you mean {close[0]}=?)" if close else ""
    raise InvalidArgument(
        f"Unknown option {name}= for {where}{hint}. Its options: {', '.join(options)}. "
        f"A keyword argument of the function itself goes in fn_kwargs={{{name!r}: ...}}"
    )


def check_call(fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """`InvalidArgument` now, before any partition, when ``fn`` cannot take these arguments."""
    if not callable(fn):
        raise InvalidArgument(f"Cannot run {fn!r}: it is not a function (not callable)")
    if not all(isinstance(k, str) for k in kwargs):
        raise InvalidArgument("fn_kwargs must map argument names (strings) to values")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: the remote side will say
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise InvalidArgument(f"{_name(fn)}() cannot take these arguments: {exc}") from None


def keyword_arguments(value: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of ``fn_kwargs`` (`InvalidArgument` when it is no dict)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"fn_kwargs must be a dict of keyword arguments, not {value!r}")
    return dict(value)


def _name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__name__", None) or type(fn).__name__)


# -- one session per call (or kept) -------------------------------------------------------------


class _Abandoned(CumulusError):
    """The call's session was given up from another thread (`CumulusClient.map` stopping)."""


class CallSession(RemoteSession):
    """A `RemoteSession` whose start can be asked not to wait in the queue (``KERNEL_WAIT=0``)
    and can be given up from another thread (`abandon`: a timeout, a map that stops), whether
    it is starting, running the function or transferring values."""

    def __init__(self, name: str, settings: GatewaySettings) -> None:
        super().__init__(name, settings)
        self.abandoned: CumulusError | None = None
        self.installed: set[tuple[str, ...]] = set()  # requirements this kernel has
        self._starting: concurrent.futures.Future[None] | None = None
        self._given_up = threading.Event()
        self._release_lock = threading.Lock()

    def open(
        self, gpu: str, duration_s: int, on_progress: Callable[[str], None], *, wait: bool,
        launch_timeout: float,
    ) -> None:  # fmt: skip
        """Start the kernel (`RemoteSession.start`), in the queue up to ``launch_timeout``
        seconds when ``wait``, else refused at once (`ResourceExhausted`) when nothing fits."""
        if self.abandoned is not None:
            raise self.abandoned
        request_env = {
            names.KERNEL_WAIT: "1" if wait else "0",
            names.KERNEL_LAUNCH_TIMEOUT: f"{max(launch_timeout, 1.0):.3f}",
        }
        coro = self._open(gpu, str(duration_s), on_progress, request_env, launch_timeout)
        self._starting = asyncio.run_coroutine_threadsafe(coro, loop.background_loop())
        try:
            self._starting.result()
        except concurrent.futures.CancelledError:
            raise self.abandoned or _Abandoned("the start was cancelled") from None
        except BaseException:  # Ctrl-C here: the gateway drops the request when we leave
            self._starting.cancel()
            raise
        finally:
            self._starting = None

    async def _open(
        self, gpu: str, duration: str, on_progress: Callable[[str], None],
        request_env: dict[str, str], launch_timeout: float,
    ) -> None:  # fmt: skip
        await self._start(
            gpu, duration, on_progress, env=request_env, launch_timeout=launch_timeout
        )

    def abandon(self, error: CumulusError) -> None:
        """Give the session up, from any thread: a start under way is cancelled (the gateway
        drops the request), a call under way raises ``error`` in its thread and the remote
        function is interrupted. The owner of the session then releases it."""
        if self.abandoned is not None:
            return
        self.abandoned = error
        self._given_up.set()
        starting = self._starting
        if starting is not None:
            starting.cancel()
        kernel = self.kernel
        if kernel is not None:
            self._lose(error)  # first: the waiting thread raises this, not the interrupt's
            with contextlib.suppress(Exception):
                loop.call(kernel.interrupt(), timeout=10)

    def pause(self, seconds: float) -> None:
        """Sleep between retries; `abandon` cuts it short (and this raises its error)."""
        if self._given_up.wait(seconds) and self.abandoned is not None:
            raise self.abandoned

    def release(self) -> None:
        # the owner and a stopping map may both release it
        with self._release_lock, contextlib.suppress(CumulusError):
            super().release()


# -- the call itself ----------------------------------------------------------------------------


def _forward_output(message: Message) -> None:
    if message["msg_type"] == "stream":
        stream = sys.stderr if message["content"].get("name") == "stderr" else sys.stdout
        stream.write(message["content"].get("text", ""))
        stream.flush()


def _install(
    session: CallSession, requirements: tuple[str, ...], on_progress: Callable[[str], None]
) -> None:
    """pip into the session's overlay (cached by the requirements' hash there), once per kernel."""
    if not requirements or requirements in session.installed:
        return
    lines: list[str] = []
    session.install(
        list(requirements),
        lambda m: lines.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None,
    )
    session.installed.add(requirements)
    for line in "".join(lines).splitlines():
        on_progress(f"requirements: {line}")


def call_in(
    session: CallSession, fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
) -> Any:
    """``fn(*args, **kwargs)`` in the session's kernel: the values ride inside the execute
    request and the result inside its reply when they fit (one round trip), else they go by
    the session's comms (and its data path)."""
    values = {_FN: fn, _ARGS: tuple(args), _KWARGS: kwargs}
    carry = session.prepare_push(values, force=True)
    if carry is not None and carry.total > kernel_code.INLINE_MAX_BYTES:
        session.push(values, force=True)
        carry = None
    pull: dict[str, Any] = {"names": [_RESULT], "watched": {}, "max_bytes": None,
            "inline_max": kernel_code.INLINE_MAX_BYTES}  # fmt: skip
    reply = session.execute(
        CALL, _forward_output, carry=carry, pull=pull,
        stop_on_error=False,  # each call stands alone: one that failed aborts none after it
    )  # fmt: skip
    status = reply["content"].get("status")
    if status == "error":
        raise RemoteError.from_reply(reply["content"])
    if status != "ok":  # "aborted": it never ran
        raise Internal(f"The remote kernel did not run {_name(fn)}(): its reply was {status!r}")
    inline = session.inline_pulled(reply)
    if inline is not None and _RESULT in inline.values:
        result = inline.values[_RESULT]
    else:
        result = session.pull([_RESULT])[0].get(_RESULT)
    if isinstance(result, RemoteRef):  # it would not pickle there
        reason = result.info.get("unpicklable", "it is too large")
        raise InvalidArgument(f"The result of {_name(fn)}() cannot come back: {reason}")
    return result


@contextlib.contextmanager
def _deadline(session: CallSession, timeout: float | None, what: str) -> Iterator[None]:
    """Past ``timeout`` seconds the session is abandoned with `DeadlineExceeded`; whatever
    the call raises then is turned into that error."""
    timer = None
    if timeout is not None:
        error = DeadlineExceeded(f"{what} did not finish within {timeout:g} s (timeout=)")
        timer = threading.Timer(timeout, session.abandon, [error])
        timer.daemon = True
        timer.start()
    try:
        yield
    except Exception as exc:
        if session.abandoned is not None and exc is not session.abandoned:
            raise session.abandoned from exc
        raise
    finally:
        if timer is not None:
            timer.cancel()


def backoff(attempt: int, retry_after: float | None) -> float:
    """The wait before retry ``attempt + 1``: exponential, jittered, capped by `RETRY_MAX_S`
    and by the gateway's ``Retry-After`` (when known expiries are sure to free room; a
    release may free it sooner, which the retries find)."""
    delay = min(RETRY_BASE_S * 2.0**attempt, RETRY_MAX_S) * random.uniform(0.9, 1.1)
    if retry_after is not None and retry_after > 0:
        delay = min(delay, retry_after)
    return delay


def open_session(
    session: CallSession, options: CallOptions, on_progress: Callable[[str], None],
    *, wait: bool = True,
) -> None:  # fmt: skip
    """Start ``session`` as ``options`` say: in the queue (``max_retries`` None), or refused
    at once and retried with backoff up to ``max_retries`` times; ``wait=False``: refused at
    once, never retried (`CumulusClient.map`'s extra sessions)."""
    launch_timeout = options.timeout or LAUNCH_TIMEOUT_S
    queue = wait and options.max_retries is None
    for attempt in itertools.count():
        try:
            session.open(
                options.gpu, options.duration_s, on_progress, wait=queue,
                launch_timeout=launch_timeout,
            )  # fmt: skip
            return
        except ResourceExhausted as exc:
            if queue or not wait or attempt >= (options.max_retries or 0):
                raise
            delay = backoff(attempt, exc.retry_after)
            on_progress(
                f"cluster full ({exc}); retry {attempt + 1} of {options.max_retries} "
                f"in {delay:.1f} s"
            )
            session.pause(delay)


# -- the client ---------------------------------------------------------------------------------


class CumulusClient:
    """A Cumulus gateway, as the seed SDK's client: `run` a function in a partition, `map`
    one over many partitions. ``server_url`` and ``token`` default to ``CUMULUS_GATEWAY_URL``
    and ``CUMULUS_TOKEN`` (or ``CUMULUS_TOKEN_FILE``), as everywhere in Cumulus.
    ``on_progress`` gets each progress line (default: ``Cumulus: …`` on stderr).

    Sessions kept by name (``session=``) live until `close`, the ``with`` block's end, or
    the program's end."""

    def __init__(
        self,
        server_url: str | None = None,
        token: str | None = None,
        *,
        on_progress: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = GatewaySettings.resolve(server_url, token)
        self.on_progress = on_progress or _say
        self._kept: dict[str, CallSession] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> CumulusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the kept sessions' partitions now, not at expiry."""
        with self._lock:
            kept, self._kept = list(self._kept.values()), {}
        RemoteSession.release_many(list(kept))

    @property
    def sessions(self) -> list[str]:
        """The names of the sessions this client keeps."""
        return sorted(self._kept)

    def run(
        self,
        func: Callable[..., Any],
        *args: Any,
        gpu_memory: str | float | None = None,
        gpu: str | float | None = None,
        duration: str | int = 3600,
        requirements: str | Sequence[str] | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        session: str | None = None,
        fn_kwargs: dict[str, Any] | None = None,
        **unknown: Never,
    ) -> Any:
        """``func(*args, **fn_kwargs)`` in a partition of ``gpu_memory`` (or ``gpu``, its
        other name; default 0.5) for ``duration`` (seconds or ``"1h"``); returns its result.

        ``requirements``: pip arguments installed into the kernel's overlay first (cached by
        their hash). ``timeout``: seconds for the whole call, queueing included, then
        `DeadlineExceeded` and the partition released. ``max_retries``: on a full cluster,
        retry with backoff this many times instead of waiting in the queue. ``session``: a
        name to keep the kernel under for later calls. Remote exceptions raise `RemoteError`
        with the remote traceback."""
        refuse_unknown("CumulusClient.run", unknown, OPTIONS)
        options = CallOptions.parse(
            gpu_memory=gpu_memory, gpu=gpu, duration=duration, requirements=requirements,
            timeout=timeout, max_retries=max_retries, session=session,
        )  # fmt: skip
        kwargs = keyword_arguments(fn_kwargs)
        check_call(func, args, kwargs)
        return self.call(func, args, kwargs, options)

    def call(
        self,
        func: Callable[..., Any],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        options: CallOptions,
    ) -> Any:
        """`run` with its options already checked (`CallOptions.parse`, `check_call`)."""
        session = self._session_for(func, options)
        try:
            with _deadline(session, options.timeout, f"{_name(func)}()"):
                if not session.alive:
                    open_session(session, options, self.on_progress)
                _install(session, options.requirements, self.on_progress)
                return call_in(session, func, args, kwargs)
        except BaseException:
            self._drop(session, options)
            raise
        finally:
            if options.session is None:
                session.release()

    def _session_for(self, func: Callable[..., Any], options: CallOptions) -> CallSession:
        if options.session is None:
            return CallSession(f"run-{_name(func)}", self.settings)
        with self._lock:
            kept = self._kept.get(options.session)
            if kept is None or kept.abandoned is not None or (kept.kernel and not kept.alive):
                kept = self._kept[options.session] = CallSession(options.session, self.settings)
            return kept

    def _drop(self, session: CallSession, options: CallOptions) -> None:
        """A kept session whose call timed out, died or never started is not kept."""
        if options.session is not None and (session.abandoned or not session.alive):
            with self._lock:
                if self._kept.get(options.session) is session:
                    del self._kept[options.session]
            session.release()

    def map(
        self,
        func: Callable[..., Any],
        items: Iterable[Any],
        *,
        gpu_memory: str | float | None = None,
        gpu: str | float | None = None,
        duration: str | int = 3600,
        requirements: str | Sequence[str] | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        max_parallel: int | None = None,
        return_exceptions: bool = False,
        fn_kwargs: dict[str, Any] | None = None,
        progress: bool = True,
        **unknown: Never,
    ) -> list[Any]:
        """``[func(item, **fn_kwargs) for item in items]``, spread over as many partitions of
        ``gpu`` (default 0.1) as fit now, at most ``max_parallel``; the other items wait
        for a free session here, never for an over-committed device. Results come in input
        order. The first failure stops the map and is raised with ``.index`` (its item's
        position) set and noted; with ``return_exceptions=True`` each failure takes its
        item's place instead. ``timeout`` bounds each item's call; ``max_retries`` is how the
        first session starts on a full cluster (the rest start only where room is free).
        Every partition is released at the end, on an error and on Ctrl-C. A progress bar
        (tqdm: a widget in a notebook, text on a terminal) unless ``progress=False``."""
        refuse_unknown("CumulusClient.map", unknown, MAP_OPTIONS)
        options = CallOptions.parse(
            gpu_memory=gpu_memory, gpu=gpu, duration=duration, requirements=requirements,
            timeout=timeout, max_retries=max_retries, default_gpu=DEFAULT_MAP_GPU,
        )  # fmt: skip
        work = _items(items)
        kwargs = keyword_arguments(fn_kwargs)
        _positive("max_parallel", max_parallel)
        if work:
            check_call(func, work[:1], kwargs)
        return _Fanout(self, func, work, kwargs, options, return_exceptions).run(
            max_parallel, progress
        )

    def capacity(self, gpu: str | float) -> int:
        """How many partitions of ``gpu`` the gateway's devices have room for now."""
        return loop.call(_capacity(self.settings, parse_amount(gpu)))


def _items(items: Iterable[Any]) -> list[Any]:
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise InvalidArgument(
            f"map's items must be an iterable of inputs (a list, a range…), not "
            f"{type(items).__name__}"
        )
    return list(items)


async def _capacity(settings: GatewaySettings, amount: float) -> int:
    client = GatewayClient(settings)
    try:
        devices = await client.request("GET", "/api/cumulus/devices")
    finally:
        await client.aclose()
    return fits(devices or [], amount)


def fits(devices: list[dict[str, Any]], amount: float) -> int:
    """How many partitions of ``amount`` the devices' free shares hold (as the allocator
    counts: tenths of one device, or whole free devices)."""
    tenths = round(amount * 10)
    free = [round(float(d.get("free", 0)) * 10) for d in devices]
    if tenths < 10:
        return sum(f // tenths for f in free)
    return sum(1 for f in free if f >= 10) // (tenths // 10)


class _Fanout:
    """One `CumulusClient.map`: worker threads, each with its own session, take the next
    item as soon as they are free; the first worker waits for its partition as `run` does,
    the others start only where room is free now (so nothing is over-committed)."""

    def __init__(
        self,
        client: CumulusClient,
        func: Callable[..., Any],
        items: list[Any],
        kwargs: dict[str, Any],
        options: CallOptions,
        return_exceptions: bool,
    ) -> None:
        self.client, self.func, self.items, self.kwargs = client, func, items, kwargs
        self.options, self.return_exceptions = options, return_exceptions
        self.results: list[Any] = [None] * len(items)
        self.failure: BaseException | None = None
        self.sessions: list[CallSession] = []
        self.stopping = False
        self._next = iter(range(len(items)))
        self._lock = threading.Lock()
        self._bar: Any = None
        self._ready = 0

    def run(self, max_parallel: int | None, progress: bool) -> list[Any]:
        if not self.items:
            return []
        from tqdm.auto import tqdm

        wanted = min(len(self.items), max_parallel or len(self.items))
        workers = max(1, min(wanted, self.client.capacity(self.options.gpu)))
        self._bar = tqdm(
            total=len(self.items), unit="call", disable=not progress,
            desc=f"{_name(self.func)} on {workers} x {self.options.gpu} GPU",
        )  # fmt: skip
        threads = [
            threading.Thread(
                target=self._work, args=(i == 0,), name=f"cumulus-map-{i}", daemon=True
            )
            for i in range(workers)
        ]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():  # a short join: Ctrl-C reaches this thread at once
                    thread.join(0.1)
        except BaseException:
            self._stop(_Abandoned("the map was interrupted"))
            for thread in threads:
                thread.join(30)
            raise
        finally:
            self._bar.close()
            RemoteSession.release_many(list(self.sessions))
        if self.failure is not None:
            raise self.failure
        return self.results

    def _work(self, first: bool) -> None:
        session: CallSession | None = None
        try:
            while not self.stopping:
                if session is None:
                    session = self._open(first)
                    if session is None:
                        return
                index = self._take()
                if index is None:
                    return
                self._one(session, index)
                if not session.alive:  # timed out or died: the next item gets a new one
                    session.release()
                    session = None
        except BaseException as exc:
            self._fail(exc)
        finally:
            if session is not None:
                session.release()

    def _open(self, first: bool) -> CallSession | None:
        session = CallSession(f"map-{_name(self.func)}", self.client.settings)
        with self._lock:
            if self.stopping:
                return None
            self.sessions.append(session)
        try:
            open_session(session, self.options, self._progress, wait=first)
        except CumulusError as exc:
            session.release()
            if first or isinstance(exc, _Abandoned):
                raise
            if not isinstance(exc, ResourceExhausted):
                self._progress(f"one session fewer: {exc}")
            return None
        return session

    def _take(self) -> int | None:
        with self._lock:
            return None if self.stopping else next(self._next, None)

    def _one(self, session: CallSession, index: int) -> None:
        try:
            with _deadline(session, self.options.timeout, f"item {index} of map"):
                _install(session, self.options.requirements, self._progress)
                self.results[index] = call_in(session, self.func, (self.items[index],), self.kwargs)
        except Exception as exc:
            if isinstance(exc, _Abandoned):
                return  # the map is stopping: not this item's failure
            exc.index = index  # type: ignore[attr-defined]
            exc.add_note(f"raised by item {index} of {len(self.items)} in CumulusClient.map")
            if not self.return_exceptions:
                self._fail(exc)
                return
            self.results[index] = exc
        self._bar.update(1)

    def _progress(self, line: str) -> None:
        if self._bar is None or self._bar.disable:
            self.client.on_progress(line)
            return
        if line.startswith("partition "):  # one more session ready
            with self._lock:
                self._ready += 1
            line = f"{self._ready} session{'s' if self._ready > 1 else ''}"
        self._bar.set_postfix_str(line[:80])

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            if self.failure is not None or self.stopping:
                return
            self.failure = error
        self._stop(_Abandoned("another item of the map failed"))

    def _stop(self, error: CumulusError) -> None:
        with self._lock:
            self.stopping = True
            sessions = list(self.sessions)
        for session in sessions:
            session.abandon(error)
