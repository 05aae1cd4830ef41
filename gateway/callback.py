"""The callback of kernels in containers: how a kernel started elsewhere tells the gateway its
ports and key.

A container runtime asks `Callbacks.issue` for a token before it starts the container: 256 random
bits, bound to that kernel, good for one use until the launch deadline. The container's launcher
(`cumulus_jupyter.launcher`) POSTs its connection info to
``/api/cumulus/kernels/{kernel_id}/callback`` with ``Authorization: token <that token>``; the
runtime's `Callbacks.wait` then returns it. A wrong, reused or expired token, or one for another
kernel, is answered 403 and logged as a warning with the caller's address. Only a hash of each
token is kept.

The endpoint does not take the gateway's user token (the container never sees it): the
per-kernel token is its authentication.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.base.handlers import APIHandler
from tornado import web

from cumulus_jupyter.errors import CumulusError, DeadlineExceeded, PermissionDenied

_KEEP_S = 3600.0  # how long a spent token is remembered, to tell a replay it was used
_REQUIRED = ("ip", "key", "shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


@dataclass
class _Pending:
    digest: bytes
    deadline: float
    future: asyncio.Future[dict[str, Any]] = field(repr=False)
    used: bool = False


class Callbacks:
    """Single-use callback tokens and the kernels waiting on them."""

    def __init__(self) -> None:
        self._pending: dict[str, _Pending] = {}

    def issue(self, kernel_id: str, ttl_s: float) -> str:
        """A new token for ``kernel_id`` (replacing any earlier one, as on a restart)."""
        now = time.monotonic()
        for old in [k for k, p in self._pending.items() if p.deadline < now - _KEEP_S]:
            del self._pending[old]  # long past: "already used" need not be told any more
        token = secrets.token_urlsafe(32)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[kernel_id] = _Pending(_digest(token), now + ttl_s, future)
        return token

    def accept(self, kernel_id: str, token: str, payload: dict[str, Any]) -> None:
        """Hand ``payload`` to the waiting runtime; `PermissionDenied` saying why otherwise."""
        pending = self._pending.get(kernel_id)
        if pending is None:
            raise PermissionDenied(f"callback token for kernel {kernel_id} not issued")
        if not hmac.compare_digest(pending.digest, _digest(token)):
            raise PermissionDenied(f"wrong callback token for kernel {kernel_id}")
        if pending.used:
            raise PermissionDenied(f"callback token for kernel {kernel_id} already used")
        checked = _checked(payload)  # a malformed report does not spend the token
        pending.used = True
        if time.monotonic() > pending.deadline:
            raise PermissionDenied(f"callback token for kernel {kernel_id} expired")
        if not pending.future.done():
            pending.future.set_result(checked)

    async def wait(self, kernel_id: str) -> dict[str, Any]:
        """The payload of ``kernel_id``'s callback (which may have come already);
        `DeadlineExceeded` at the token's deadline."""
        pending = self._pending[kernel_id]
        try:
            return await asyncio.wait_for(
                asyncio.shield(pending.future), max(0.0, pending.deadline - time.monotonic())
            )
        except TimeoutError:
            raise DeadlineExceeded(f"kernel {kernel_id} never called back") from None

    def cancel(self, kernel_id: str) -> None:
        """Forget ``kernel_id``'s token (its launch failed)."""
        pending = self._pending.pop(kernel_id, None)
        if pending is not None and not pending.future.done():
            pending.future.cancel()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _checked(payload: dict[str, Any]) -> dict[str, Any]:
    info = payload.get("connection_info")
    if not isinstance(info, dict) or any(k not in info for k in _REQUIRED):
        raise ValueError(f"connection_info must have {', '.join(_REQUIRED)}")
    for name in _REQUIRED[2:]:
        if not isinstance(info[name], int) or not 0 < info[name] < 65536:
            raise ValueError(f"connection_info.{name} must be a port number")
    port = payload.get("data_port")
    if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
        raise ValueError("data_port must be a port number")
    return payload


class CallbackHandler(APIHandler):
    """``POST /api/cumulus/kernels/{kernel_id}/callback``: a container kernel reports in."""

    def check_xsrf_cookie(self) -> None:
        """No cookies here: the per-kernel token in the header is the credential."""

    @allow_unauthenticated
    async def post(self, kernel_id: str) -> None:
        callbacks: Callbacks = self.settings["cumulus_callbacks"]
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        try:
            payload = json.loads(self.request.body or b"{}")
            if not isinstance(payload, dict):
                raise ValueError("the body must be a JSON object")
            if scheme.lower() != "token" or not token:
                raise PermissionDenied(f"callback for kernel {kernel_id} without a token")
            callbacks.accept(kernel_id, token.strip(), payload)
        except (ValueError, json.JSONDecodeError) as exc:
            raise web.HTTPError(400, f"Bad callback: {exc}") from exc
        except CumulusError as exc:
            self.log.warning(
                "refused kernel callback from %s: %s", self.request.remote_ip, exc,
                extra={"event": "callback_refused", "kernel_id": kernel_id},
            )  # fmt: skip
            raise web.HTTPError(exc.status, str(exc)) from exc
        self.log.info(
            "kernel %s called back from %s", kernel_id, self.request.remote_ip,
            extra={"event": "kernel_called_back", "kernel_id": kernel_id},
        )  # fmt: skip
        self.set_status(204)
        self.finish()


default_handlers = [
    (r"/api/cumulus/kernels/(?P<kernel_id>[\w-]+)/callback", CallbackHandler),
]
