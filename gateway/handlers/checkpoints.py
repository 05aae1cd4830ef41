"""``/api/cumulus/checkpoints``: an owner's checkpoints on L2 (`gateway.checkpoints`).

Two credentials reach it: a user's token (``Authorization: token ...``: that user's own
checkpoints; the operator's names an ``owner``, default ``anonymous``), and a kernel's
checkpoint token (``Authorization: checkpoint ...``), which names the kernel's owner and is
what the agent in a kernel writes and reads with. Either way only that owner's prefix is
reached: another owner's checkpoint is not there (404), whatever its name.
"""

from __future__ import annotations

import asyncio
import json
import re

from jupyter_server.auth.decorator import allow_unauthenticated

from cumulus_jupyter.errors import InvalidArgument, NotFound, Unauthenticated
from gateway.checkpoints import TOKEN_SCHEME, CheckpointStore
from gateway.handlers.base import NO_TOKEN, CumulusHandler, check_username

_VERSION = re.compile(r"[0-9]{1,9}")


class _CheckpointHandler(CumulusHandler):
    @property
    def store(self) -> CheckpointStore:
        return self.services.checkpoints

    def _kernel_token(self) -> str | None:
        scheme, _, token = self.request.headers.get("Authorization", "").partition(" ")
        return token if scheme.lower() == TOKEN_SCHEME and token else None

    def check_xsrf_cookie(self) -> None:
        """Both credentials come in a header on each request, never in a cookie (the gateway
        keeps no logins, `gateway.auth`): nothing for a cross-site request to ride on."""

    def owner(self) -> str:
        """Whose checkpoints the caller reaches: its kernel's owner, or its own name, or (the
        operator) the ``owner`` it names; `Unauthenticated` for anyone else."""
        token = self._kernel_token()
        if token is not None:
            owner = self.store.owner_of(token)
            if owner is None:
                raise Unauthenticated("Not a checkpoint token of this gateway")
            return owner
        if getattr(self, "_jupyter_current_user", None) is None:
            raise Unauthenticated(NO_TOKEN)
        user = self.scoped_name()
        if user is not None:
            return user
        return check_username(self.get_argument("owner", "anonymous"), "owner")


def _version(raw: str) -> int:
    if not _VERSION.fullmatch(raw):
        raise InvalidArgument(f"Invalid checkpoint version: {raw[:20]!r}")
    return int(raw)


class CheckpointsHandler(_CheckpointHandler):
    @allow_unauthenticated  # `owner` asks for a user's token or a kernel's checkpoint token
    async def get(self) -> None:
        owner = self.owner()
        found = await asyncio.to_thread(self.store.names, owner) if self.store.url else []
        self.finish(json.dumps(found))


class CheckpointHandler(_CheckpointHandler):
    @allow_unauthenticated
    async def get(self, name: str) -> None:
        owner = self.owner()
        versions = await asyncio.to_thread(self.store.versions, owner, name)
        if not versions:
            raise NotFound(f"No checkpoint {name} on L2")
        self.finish(json.dumps({"name": name, "versions": versions}))


class CheckpointFileHandler(_CheckpointHandler):
    @allow_unauthenticated
    async def get(self, name: str, version: str, file: str) -> None:
        owner = self.owner()
        data = await asyncio.to_thread(self.store.read, owner, name, _version(version), file)
        self.set_header("Content-Type", "application/octet-stream")
        self.finish(data)

    @allow_unauthenticated
    async def put(self, name: str, version: str, file: str) -> None:
        owner = self.owner()
        number = _version(version)
        body = self.request.body or b""
        await asyncio.to_thread(self.store.write, owner, name, number, file, body)
        self.set_status(204)
        self.finish()


default_handlers = [  # loaded by jupyter_server as an extra service
    (r"/api/cumulus/checkpoints", CheckpointsHandler),
    (r"/api/cumulus/checkpoints/(?P<name>[^/]+)", CheckpointHandler),
    (r"/api/cumulus/checkpoints/(?P<name>[^/]+)/(?P<version>[^/]+)/(?P<file>[^/]+)",
     CheckpointFileHandler),
]  # fmt: skip
