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
from typing import Any, cast

from jupyter_server.auth.decorator import allow_unauthenticated
from tornado import web

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


@web.stream_request_body  # a file is written to L2 as it arrives, never held whole
class CheckpointFileHandler(_CheckpointHandler):
    _out: Any = None  # the L2 file a PUT writes
    _failed: BaseException | None = None  # why writing it failed, said when the body ends

    async def prepare(self, *args: Any, **kwargs: Any) -> None:
        """For a PUT, who and where before the body comes; then it is written as it arrives."""
        await super().prepare(*args, **kwargs)
        if self.request.method != "PUT":
            return
        limit = self.services.settings.max_transfer_bytes or 2**62
        cast(Any, self.request.connection).set_max_body_size(limit)
        where = self.path_kwargs
        owner, version = self.owner(), _version(where["version"])
        self._out = await asyncio.to_thread(
            self.store.open_write, owner, where["name"], version, where["file"]
        )

    async def data_received(self, chunk: bytes) -> None:
        if self._out is None or self._failed is not None:
            return
        try:
            await asyncio.to_thread(self.store.write_chunk, self._out, chunk)
        except Exception as exc:  # said once the body has ended, as the answer
            self._failed = exc

    @allow_unauthenticated
    async def get(self, name: str, version: str, file: str) -> None:
        owner = self.owner()
        source = await asyncio.to_thread(self.store.open_read, owner, name, _version(version), file)
        try:
            self.set_header("Content-Type", "application/octet-stream")
            while chunk := await asyncio.to_thread(self.store.read_chunk, source):
                self.write(chunk)
                await self.flush()
        finally:
            await asyncio.to_thread(self.store.close, source)
        self.finish()

    @allow_unauthenticated
    async def put(self, name: str, version: str, file: str) -> None:
        out, self._out = self._out, None
        if self._failed is not None:
            await asyncio.to_thread(self.store.close, out, False)
            raise self._failed
        await asyncio.to_thread(self.store.close, out)
        self.set_status(204)
        self.finish()

    def on_finish(self) -> None:
        """A PUT cut off (or refused) before its body ended: nothing of it is kept."""
        out, self._out = self._out, None
        if out is not None:
            self.store.close(out, keep=False)

    def on_connection_close(self) -> None:
        self.on_finish()


default_handlers = [  # loaded by jupyter_server as an extra service
    (r"/api/cumulus/checkpoints", CheckpointsHandler),
    (r"/api/cumulus/checkpoints/(?P<name>[^/]+)", CheckpointHandler),
    (r"/api/cumulus/checkpoints/(?P<name>[^/]+)/(?P<version>[^/]+)/(?P<file>[^/]+)",
     CheckpointFileHandler),
]  # fmt: skip
