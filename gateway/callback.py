"""`Callbacks`: the single-use tokens with which kernels in containers report their ports and key.

A container runtime asks `Callbacks.issue` for a token before it starts the container: 256 random
bits, bound to that kernel, good for one use until the launch deadline. The container's launcher
(`cumulus_jupyter.agent.launcher`) POSTs its connection info (`cumulus_jupyter.protocol.callback`)
to the callback endpoint (`gateway.handlers.callback`) with ``Authorization: token <that token>``;
the runtime's `Callbacks.wait` then returns it. A wrong, reused or expired token, or one for
another kernel, is refused with `PermissionDenied` (403); a malformed report with
`InvalidArgument` (400), without spending the token. Only a hash of each token is kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from cumulus_jupyter.errors import DeadlineExceeded, PermissionDenied
from cumulus_jupyter.protocol import callback

_KEEP_S = 3600.0  # how long a spent token is remembered, to tell a replay it was used


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

    def accept(self, kernel_id: str, token: str, payload: object) -> None:
        """Hand ``payload`` to the waiting runtime; `PermissionDenied` saying why otherwise,
        `InvalidArgument` for a malformed one."""
        pending = self._pending.get(kernel_id)
        if pending is None:
            raise PermissionDenied(f"callback token for kernel {kernel_id} not issued")
        if not hmac.compare_digest(pending.digest, _digest(token)):
            raise PermissionDenied(f"wrong callback token for kernel {kernel_id}")
        if pending.used:
            raise PermissionDenied(f"callback token for kernel {kernel_id} already used")
        checked = callback.checked(payload)  # a malformed report does not spend the token
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
