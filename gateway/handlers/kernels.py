"""``/api/kernels`` and the kernel channels WebSocket, in front of jupyter_server's handlers.

- ``POST /api/kernels`` accepts the ``env`` a Kernel Gateway client sends (``KERNEL_GPU``,
  ``KERNEL_DURATION``, ``KERNEL_USERNAME``, ...), validates it (`validated_env`) and refuses a
  bad amount or duration before any kernel machinery starts;
- ``GET/DELETE /api/kernels/{id}``, its actions and the channels WebSocket answer 410 with the
  reason for a kernel whose partition ended, 403 for another user's kernel;
- a ``POST /api/kernels`` whose client goes away (a client timeout, a closed tab) while its
  kernel starts is abandoned: a request waiting in the partition queue leaves it at once, a
  kernel further along is stopped once started (`CumulusKernelManager.start_kernel`);
- the kernel WebSocket sets TCP_NODELAY (without it, Nagle's algorithm adds ~40 ms to every
  execute round trip) and can inject iopub messages (expiry warnings) into its client; a
  client session's first connection to a kernel adopted after a gateway restart is told what
  output was lost meanwhile (`gateway.adoption`).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, cast

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized
from jupyter_server.services.kernels.handlers import KernelActionHandler as _KernelActionHandler
from jupyter_server.services.kernels.handlers import (
    KernelHandler,
    MainKernelHandler,
    _kernel_action_regex,
    _kernel_id_regex,
)
from jupyter_server.services.kernels.websocket import KernelWebsocketHandler
from jupyter_server.utils import url_escape, url_path_join
from tornado import web

from chronos import GpuAmount, parse_duration
from cumulus_jupyter.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    TooLarge,
    Unauthenticated,
)
from cumulus_jupyter.protocol import env as names
from gateway.errors import chronos_boundary
from gateway.handlers.base import (
    NO_TOKEN,
    CumulusErrors,
    CumulusHandler,
    check_amount_text,
    check_kernel_access,
    check_username,
    services_of,
)
from gateway.handlers.incoming import check_incoming
from gateway.provisioner import launch_timeout, request_tag

MAX_BODY_BYTES = 64 * 1024
V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"
MAX_ENV_VARS = 128
MAX_ENV_VALUE = 4096
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def validated_env(raw: object) -> dict[str, str]:
    """The request's kernel environment: ``KERNEL_*`` names with bounded, printable values.

    Other names are dropped (a Jupyter Server's ``GatewayClient.allowed_envs`` may send them);
    a malformed entry is `InvalidArgument` (400) naming it.
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidArgument("env must be a JSON object of string values")
    if len(raw) > MAX_ENV_VARS:
        raise InvalidArgument(f"env has {len(raw)} variables; at most {MAX_ENV_VARS} allowed")
    env: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(value, str):
            raise InvalidArgument(f"env {name}: value must be a string")
        if not _ENV_NAME.fullmatch(name):
            raise InvalidArgument(f"env {name!r}: not a valid variable name")
        if len(value) > MAX_ENV_VALUE:
            raise InvalidArgument(f"env {name}: value longer than {MAX_ENV_VALUE} characters")
        if _CONTROL.search(value):
            raise InvalidArgument(f"env {name}: value contains control characters")
        if name.startswith(names.KERNEL_PREFIX):
            env[name] = value
    return env


def check_amounts(env: dict[str, str]) -> None:
    """A bad ``KERNEL_GPU``, ``KERNEL_DURATION`` or ``KERNEL_LAUNCH_TIMEOUT`` is
    `InvalidArgument`, before any launch (the provisioner parses them again; a refusal there
    would be logged as a failed launch)."""
    with chronos_boundary():
        if names.KERNEL_GPU in env:
            check_amount_text(env[names.KERNEL_GPU])
            GpuAmount.parse(env[names.KERNEL_GPU])
        if names.KERNEL_DURATION in env:
            parse_duration(env[names.KERNEL_DURATION])
    launch_timeout(env.get(names.KERNEL_LAUNCH_TIMEOUT), 0)
    request_tag(env.get(names.KERNEL_REQUEST_TAG))


class CumulusMainKernelHandler(CumulusHandler, MainKernelHandler):
    _request_task: asyncio.Task[Any] | None = None  # what answers this request, while it runs
    _client_left = False

    def on_connection_close(self) -> None:
        """Called by tornado when the client goes away before its answer (while the kernel
        starts): the request is cancelled, so no partition and no kernel are taken for it."""
        self._client_left = True
        if self._request_task is not None and not self._request_task.done():
            self._request_task.cancel()
        super().on_connection_close()

    def _gone(self) -> bool:
        """Whether the client has left (tornado may not have called `on_connection_close` yet
        for a connection it has seen end)."""
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None and stream.closed():
            self._client_left = True
        return self._client_left

    @web.authenticated
    @authorized
    async def get(self) -> None:
        km, registry = self.kernels, self.services.registry
        user = self.scoped_name()
        models = [
            km.kernel_model(kernel_id)
            for kernel_id in km.list_kernel_ids()
            if user is None or registry.owner_of(kernel_id) == user
        ]
        self.finish(json.dumps(models, default=str))

    @web.authenticated
    @authorized
    async def post(self) -> None:
        self._request_task = asyncio.current_task()
        self._gone()  # it may have left before tornado watched for that
        try:
            if not self._client_left:  # it may have left while it was authenticated
                await self._start_kernel()
        except asyncio.CancelledError:
            if not self._client_left:
                raise
            if self._request_task is not None:
                self._request_task.uncancel()
        finally:
            self._request_task = None
        if self._client_left:  # nobody to answer
            self.log.info("POST /api/kernels: the client left before its kernel started")

    async def _start_kernel(self) -> None:
        if len(self.request.body) > MAX_BODY_BYTES:
            raise TooLarge(f"request body over {MAX_BODY_BYTES} bytes")
        model = self.json_object()
        km = self.kernels
        name = model.get("name") or km.default_kernel_name
        specs = self.kernel_spec_manager.find_kernel_specs()
        if not isinstance(name, str) or name not in specs:
            raise NotFound(f"Unknown kernelspec: {name}. Available: {', '.join(specs)}")
        env = validated_env(model.get("env"))
        user = self.scoped_name()
        if user is not None and env.setdefault(names.KERNEL_USERNAME, user) != user:
            raise PermissionDenied(f"{user} may not start kernels as {env[names.KERNEL_USERNAME]}")
        if user is None and env.get(names.KERNEL_USERNAME):  # the operator names the owner
            check_username(env[names.KERNEL_USERNAME])
        check_amounts(env)
        path = model.get("path")
        if path is not None and not isinstance(path, str):
            raise InvalidArgument("path must be a string")
        kernel_id = await km.start_kernel(
            kernel_name=name, path=cast(Any, path), env=env,
            quota_exempt=user is None,  # the operator's token: no quotas (gateway.quotas)
        )  # fmt: skip
        if self._gone():  # it left as its kernel came up: nobody will ever learn the kernel's id
            self.log.info("POST /api/kernels: the client left as kernel %s started", kernel_id)
            self._request_task = None  # its stop is not to be cancelled by the closing connection
            await km.shutdown_kernel(kernel_id, now=True)
            return
        body = km.kernel_model(kernel_id)
        self.set_header(
            "Location", url_path_join(self.base_url, "api", "kernels", url_escape(kernel_id))
        )
        self.set_status(201)
        self.finish(json.dumps(body, default=str))


class CumulusKernelHandler(CumulusHandler, KernelHandler):
    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        self.check_kernel_access(kernel_id)
        model = await ensure_async(self.kernels.kernel_model(kernel_id))
        self.finish(json.dumps(model, default=str))

    @web.authenticated
    @authorized
    async def delete(self, kernel_id: str) -> None:
        self.check_kernel_access(kernel_id)
        await self.kernels.shutdown_kernel(kernel_id)
        self.set_status(204)
        self.finish()


class CumulusKernelActionHandler(CumulusHandler, _KernelActionHandler):
    @web.authenticated
    @authorized
    async def post(self, kernel_id: str, action: str) -> None:
        self.check_kernel_access(kernel_id)
        km = self.kernels
        if action == "interrupt":
            await ensure_async(cast(Any, km).interrupt_kernel(kernel_id))
            self.set_status(204)
            self.finish()
            return
        await km.restart_kernel(kernel_id)
        self.finish(json.dumps(km.kernel_model(kernel_id), default=str))


class CumulusKernelWebsocketHandler(CumulusErrors, KernelWebsocketHandler):
    """The channels WebSocket, with TCP_NODELAY and expiry messages."""

    async def pre_get(self) -> None:
        if self.current_user is None:
            raise Unauthenticated(NO_TOKEN)
        check_kernel_access(self, self.kernel_id)
        await super().pre_get()

    async def open(self, kernel_id: str) -> None:  # type: ignore[override]
        services = services_of(self)
        self.set_nodelay(services.settings.tcp_nodelay)
        services.registry.connect(kernel_id, self)
        await super().open(kernel_id)
        self._tell_if_adopted(kernel_id)

    def _tell_if_adopted(self, kernel_id: str) -> None:
        connection = getattr(self, "connection", None)
        session_id = connection.session.session if connection is not None else ""
        notice = services_of(self).registry.adoptions.notice(kernel_id, session_id)
        if notice is None:
            return
        session = self.kernel_manager.get_kernel(kernel_id).session
        for msg in (
            session.msg("stream", {"name": "stderr", "text": notice["message"] + "\n"}),
            session.msg("cumulus", notice),
        ):
            self.inject_iopub(session.serialize(msg))

    def on_message(self, message: str | bytes) -> Any:
        """Called by tornado for each frame: one that is not a Jupyter message closes the
        socket with 1007 and the reason (`gateway.handlers.incoming`)."""
        if self.ws_connection is None:  # closed (by us, for an earlier frame): dropped
            return None
        try:
            check_incoming(message, self.ws_connection.selected_subprotocol == V1_PROTOCOL)
        except InvalidArgument as exc:
            self.log.warning(
                "kernel %s: closing a client's socket: %s", self.kernel_id, exc,
                extra={"event": "websocket_refused", "kernel_id": self.kernel_id},
            )  # fmt: skip
            self.close(1007, str(exc)[:120])
            return None
        return super().on_message(message)

    def on_close(self) -> None:
        services_of(self).registry.disconnect(getattr(self, "kernel_id", ""), self)
        super().on_close()

    def inject_iopub(self, frames: list[bytes]) -> None:
        """Deliver a signed iopub message to this client as if the kernel had sent it, through
        the connection's own path (so both WebSocket protocols get their framing)."""
        connection = getattr(self, "connection", None)
        stream = connection.channels.get("iopub") if connection is not None else None
        if connection is not None and stream is not None and not stream.closed():
            connection.handle_outgoing_message("iopub", frames)


default_handlers = [  # loaded by jupyter_server as an extra service
    (r"/api/kernels", CumulusMainKernelHandler),
    (rf"/api/kernels/{_kernel_id_regex}", CumulusKernelHandler),
    (rf"/api/kernels/{_kernel_id_regex}/{_kernel_action_regex}", CumulusKernelActionHandler),
    (rf"/api/kernels/{_kernel_id_regex}/channels", CumulusKernelWebsocketHandler),
]
