"""`CumulusHandler`, the base of the gateway's REST handlers, and the one ``write_error``.

Handlers raise `CumulusError` subclasses; `CumulusErrors.write_error` answers with the class's
status and jupyter_server's JSON error body, ``{"message": str(exc), "reason": class name}``,
plus ``Retry-After`` (whole seconds, rounded up, at least 1) when the error has ``retry_after``.
A Chronos error that reaches it is mapped through `gateway.errors` first. Anything else is
jupyter_server's business (its ``APIHandler.write_error``).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import re
from types import TracebackType
from typing import Any, cast

from jupyter_server.base.handlers import APIHandler
from tornado import web
from tornado.log import app_log

from chronos import ChronosError
from chronos.amount import AMOUNT_RULE
from cumulus_jupyter.errors import (
    CumulusError,
    InvalidArgument,
    PartitionExpired,
    PermissionDenied,
    Unauthenticated,
)
from gateway.auth import CumulusIdentityProvider
from gateway.errors import from_chronos
from gateway.manager import CumulusKernelManager
from gateway.services import Services

SERVICES_SETTING = "cumulus_services"  # where the app puts the services in the web app settings
NO_TOKEN = "No valid token: send Authorization: token <the gateway's token or yours>"


def cumulus_error(exc: BaseException | None) -> CumulusError | None:
    """The `CumulusError` an exception stands for, if it stands for one."""
    if isinstance(exc, ChronosError):
        return from_chronos(exc)
    return exc if isinstance(exc, CumulusError) else None


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


class CumulusErrors(web.RequestHandler):
    """The ``write_error`` of every gateway handler (REST, and the kernel WebSocket's
    handshake): mixed in before jupyter_server's handler classes.

    It also says 401 where jupyter_server says 403 to a request with no valid token (its
    XSRF check refuses a POST, its ``authenticated`` check any other): the caller is not known,
    which is `Unauthenticated`; 403 stays for a known user refused something."""

    async def prepare(self, *args: Any, **kwargs: Any) -> None:
        try:
            prepared = cast(Any, super()).prepare(*args, **kwargs)
            if inspect.isawaitable(prepared):  # jupyter_server's is async, tornado's is not
                await prepared
        except web.HTTPError as exc:
            if exc.status_code == 403 and self._unknown_caller():
                raise Unauthenticated(NO_TOKEN) from exc
            raise
        if self._unknown_caller():  # else its method's ``authenticated`` would say 403
            raise Unauthenticated(NO_TOKEN)

    def _unknown_caller(self) -> bool:
        """No valid token came, and the method being called needs one."""
        if getattr(self, "_jupyter_current_user", None) is not None:
            return False
        method = getattr(self, (self.request.method or "").lower(), None)
        return not getattr(method, "__allow_unauthenticated", False)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = cumulus_error(kwargs.get("exc_info", (None, None, None))[1])
        if exc is None:
            super().write_error(status_code, **kwargs)
            return
        self.set_status(exc.status)
        if exc.retry_after is not None:
            self.set_header("Retry-After", retry_after_header(exc.retry_after))
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": str(exc), "reason": type(exc).__name__}))

    def log_exception(
        self,
        typ: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """A `CumulusError` is an answer, not a crash: one warning line, no traceback."""
        exc = cumulus_error(value)
        if exc is None:
            super().log_exception(typ, value, tb)
            return
        logger: logging.Logger = getattr(self, "log", app_log)  # jupyter_server's, if any
        logger.warning("%d %s %s: %s", exc.status, self.request.method, self.request.path, exc)


USERNAME_RULE = (
    "letters, digits and _ . @ + - (at most 64, not starting with . or -): no spaces, "
    "control characters or path separators"
)
_USERNAME = re.compile(r"[^\W][\w.@+-]{0,63}|[@+][\w.@+-]{0,63}")


def check_username(name: str, what: str = "KERNEL_USERNAME") -> str:
    """``name``, when it is a user name: it is written in logs, listings and file names, so
    `InvalidArgument` for a newline, a control character, ``/`` or ``..``."""
    if not _USERNAME.fullmatch(name) or ".." in name:
        raise InvalidArgument(f"{what} {name[:80]!r} is not a user name: {USERNAME_RULE}")
    return name


_PLAIN_AMOUNT = re.compile(r"\s*\d+(?:\.\d+)?\s*")


def check_amount_text(value: object) -> None:
    """A GPU amount written as a request writes one, ``0.5`` or ``2``: `InvalidArgument` for
    exponents, signs and words (``0.1e1``, ``-0``, ``inf``), which Chronos's number parsing
    would otherwise read."""
    if isinstance(value, str) and not _PLAIN_AMOUNT.fullmatch(value):
        raise InvalidArgument(f"Invalid GPU amount: {value.strip()[:40]}. {AMOUNT_RULE}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) < len(keys):
        twice = next(key for key in keys if keys.count(key) > 1)
        raise InvalidArgument(f"Invalid JSON in body of request: key {twice[:80]!r} appears twice")
    return dict(pairs)


def parse_json(body: bytes) -> Any:
    """A request body's JSON: `InvalidArgument` for bytes that are not UTF-8 JSON, for a key
    given twice in one object (parsers disagree on which one wins) and for nesting deeper
    than the parser's recursion allows."""
    try:  # decoded first: json.loads would take UTF-16 and UTF-32 bytes too
        return json.loads(body.decode("utf-8"), object_pairs_hook=_unique_keys)
    except RecursionError:
        raise InvalidArgument("Invalid JSON in body of request: nested too deeply") from None
    except ValueError as exc:
        if isinstance(exc, InvalidArgument):
            raise
        raise InvalidArgument(f"Invalid JSON in body of request: {exc}") from exc


def services_of(handler: web.RequestHandler) -> Services:
    return cast(Services, handler.settings[SERVICES_SETTING])


def scoped_name(handler: Any) -> str | None:
    """The requesting user's name when they may touch only their own kernels and jobs."""
    provider = handler.identity_provider
    if isinstance(provider, CumulusIdentityProvider):
        return provider.scoped_name(handler.current_user)
    return None


def check_kernel_access(handler: Any, kernel_id: str) -> None:
    """`PermissionDenied` (403) for another user's kernel, live or ended (per-user tokens);
    `PartitionExpired` (410) with the reason for one of the user's whose partition ended; else
    nothing (an unknown kernel is jupyter_server's 404)."""
    registry = services_of(handler).registry
    user = scoped_name(handler)
    live = kernel_id in handler.kernel_manager
    reason = None if live else registry.end_reason(kernel_id)
    if not live and not reason:
        return
    owner = registry.owner_of(kernel_id) if live else registry.ended_owner(kernel_id)
    if user is not None and owner != user:
        raise PermissionDenied(f"Kernel {kernel_id} belongs to another user")
    if reason:
        raise PartitionExpired(reason)


class CumulusHandler(CumulusErrors, APIHandler):
    """The base of the gateway's REST handlers."""

    @property
    def services(self) -> Services:
        return services_of(self)

    @property
    def kernels(self) -> CumulusKernelManager:
        return cast(CumulusKernelManager, self.kernel_manager)

    def scoped_name(self) -> str | None:
        return scoped_name(self)

    def check_kernel_access(self, kernel_id: str) -> None:
        check_kernel_access(self, kernel_id)

    def json_object(self) -> dict[str, Any]:
        """The request's JSON body, an object (`InvalidArgument` otherwise; none is ``{}``)."""
        body = parse_json(self.request.body) if self.request.body else None
        body = body or {}
        if not isinstance(body, dict):
            raise InvalidArgument("request body must be a JSON object")
        return body
