"""HTTP and WebSocket handlers the gateway adds to (or puts in front of) jupyter_server's.

- ``POST /api/kernels`` accepts the ``env`` a Kernel Gateway client sends (``KERNEL_GPU``,
  ``KERNEL_DURATION``, ``KERNEL_USERNAME``, ...), validates it, and maps partition errors to
  their HTTP status (400, 429 + ``Retry-After``, 504, ...);
- ``GET/DELETE /api/kernels/{id}`` and the channels WebSocket answer 410 with the reason for a
  kernel whose partition ended;
- the kernel WebSocket sets TCP_NODELAY (without it, Nagle's algorithm adds ~40 ms to every
  execute round trip) and can inject iopub messages (expiry warnings) into its client;
- ``/api/cumulus/{health,devices,partitions,queue}``.
"""

from __future__ import annotations

import json
import re
from typing import Any, cast

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
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

from chronos import ChronosError, GpuAmount, parse_duration
from cumulus_jupyter.errors import CumulusError
from gateway.auth import CumulusIdentityProvider
from gateway.manager import CumulusKernelManager

MAX_BODY_BYTES = 64 * 1024
MAX_ENV_VARS = 128
MAX_ENV_VALUE = 4096
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class GatewayError(web.HTTPError):
    """An HTTP error whose message is for the client, optionally with ``Retry-After``."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(status, message)
        self.retry_after = retry_after

    @classmethod
    def from_exception(cls, exc: ChronosError | CumulusError) -> GatewayError:
        return cls(exc.status, str(exc), getattr(exc, "retry_after", None))


class _Errors(APIHandler):
    """JSON errors (jupyter_server's ``{"message": ...}``) that keep ``Retry-After``."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            self.set_header("Retry-After", str(max(1, round(retry_after))))
        super().write_error(status_code, **kwargs)

    @property
    def cumulus(self) -> CumulusKernelManager:
        return cast(CumulusKernelManager, self.kernel_manager)

    def gone_or_missing(self, kernel_id: str) -> None:
        """410 with the reason for a kernel whose partition ended; 403 for another user's
        kernel (per-user tokens); else nothing."""
        check_kernel_access(self, self.cumulus, kernel_id)

    def scoped_name(self) -> str | None:
        return scoped_name(self)


def scoped_name(handler: Any) -> str | None:
    """The requesting user's name when they may touch only their own kernels."""
    provider = handler.identity_provider
    if isinstance(provider, CumulusIdentityProvider):
        return provider.scoped_name(handler.current_user)
    return None


def check_kernel_access(handler: Any, km: CumulusKernelManager, kernel_id: str) -> None:
    if kernel_id not in km:
        reason = km.end_reason(kernel_id)
        if reason:
            raise GatewayError(410, reason)
        return
    user = scoped_name(handler)
    if user is not None and km.owner_of(kernel_id) != user:
        raise GatewayError(403, f"Kernel {kernel_id} belongs to another user")


def validated_env(raw: object) -> dict[str, str]:
    """The request's kernel environment: ``KERNEL_*`` names with bounded, printable values.

    Other names are dropped (a Jupyter Server's ``GatewayClient.allowed_envs`` may send them);
    a malformed entry is a 400 that names it.
    """
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise GatewayError(400, "env must be a JSON object of string values")
    if len(raw) > MAX_ENV_VARS:
        raise GatewayError(400, f"env has {len(raw)} variables; at most {MAX_ENV_VARS} allowed")
    env: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(value, str):
            raise GatewayError(400, f"env {name}: value must be a string")
        if not _ENV_NAME.fullmatch(name):
            raise GatewayError(400, f"env {name!r}: not a valid variable name")
        if len(value) > MAX_ENV_VALUE:
            raise GatewayError(400, f"env {name}: value longer than {MAX_ENV_VALUE} characters")
        if _CONTROL.search(value):
            raise GatewayError(400, f"env {name}: value contains control characters")
        if name.startswith("KERNEL_"):
            env[name] = value
    return env


class CumulusMainKernelHandler(_Errors, MainKernelHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        km = self.cumulus
        user = self.scoped_name()
        models = [
            km.kernel_model(kernel_id)
            for kernel_id in km.list_kernel_ids()
            if user is None or km.owner_of(kernel_id) == user
        ]
        self.finish(json.dumps(models, default=str))

    @web.authenticated
    @authorized
    async def post(self) -> None:
        if len(self.request.body) > MAX_BODY_BYTES:
            raise GatewayError(413, f"request body over {MAX_BODY_BYTES} bytes")
        model = self.get_json_body() or {}
        if not isinstance(model, dict):
            raise GatewayError(400, "request body must be a JSON object")
        km = self.cumulus
        name = model.get("name") or km.default_kernel_name
        specs = self.kernel_spec_manager.find_kernel_specs()
        if not isinstance(name, str) or name not in specs:
            raise GatewayError(404, f"Unknown kernelspec: {name}. Available: {', '.join(specs)}")
        env = validated_env(model.get("env"))
        user = self.scoped_name()
        if user is not None and env.setdefault("KERNEL_USERNAME", user) != user:
            raise GatewayError(403, f"{user} may not start kernels as {env['KERNEL_USERNAME']}")
        try:  # refuse a bad amount or duration before any kernel machinery starts
            if "KERNEL_GPU" in env:
                GpuAmount.parse(env["KERNEL_GPU"])
            if "KERNEL_DURATION" in env:
                parse_duration(env["KERNEL_DURATION"])
        except ChronosError as exc:
            raise GatewayError.from_exception(exc) from exc
        path = model.get("path")
        if path is not None and not isinstance(path, str):
            raise GatewayError(400, "path must be a string")
        try:
            kernel_id = await km.start_kernel(kernel_name=name, path=cast(Any, path), env=env)
        except (ChronosError, CumulusError) as exc:
            raise GatewayError.from_exception(exc) from exc
        body = km.kernel_model(kernel_id)
        self.set_header(
            "Location", url_path_join(self.base_url, "api", "kernels", url_escape(kernel_id))
        )
        self.set_status(201)
        self.finish(json.dumps(body, default=str))


class CumulusKernelHandler(_Errors, KernelHandler):
    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        self.gone_or_missing(kernel_id)
        model = await ensure_async(self.cumulus.kernel_model(kernel_id))
        self.finish(json.dumps(model, default=str))

    @web.authenticated
    @authorized
    async def delete(self, kernel_id: str) -> None:
        self.gone_or_missing(kernel_id)
        await self.cumulus.shutdown_kernel(kernel_id)
        self.set_status(204)
        self.finish()


class CumulusKernelActionHandler(_Errors, _KernelActionHandler):
    @web.authenticated
    @authorized
    async def post(self, kernel_id: str, action: str) -> None:
        self.gone_or_missing(kernel_id)
        km = self.cumulus
        if action == "interrupt":
            await ensure_async(cast(Any, km).interrupt_kernel(kernel_id))
            self.set_status(204)
            self.finish()
            return
        try:
            await km.restart_kernel(kernel_id)
        except (ChronosError, CumulusError) as exc:
            raise GatewayError.from_exception(exc) from exc
        self.finish(json.dumps(km.kernel_model(kernel_id), default=str))


class CumulusKernelWebsocketHandler(KernelWebsocketHandler):
    """The channels WebSocket, with TCP_NODELAY and expiry messages."""

    @property
    def cumulus(self) -> CumulusKernelManager:
        return cast(CumulusKernelManager, self.kernel_manager)

    async def pre_get(self) -> None:
        try:
            check_kernel_access(self, self.cumulus, self.kernel_id)
        except GatewayError as exc:
            raise web.HTTPError(exc.status_code, exc.log_message) from exc
        await super().pre_get()

    async def open(self, kernel_id: str) -> None:  # type: ignore[override]
        self.set_nodelay(self.settings.get("cumulus_tcp_nodelay", True))
        self.cumulus.connections.setdefault(kernel_id, set()).add(self)
        await super().open(kernel_id)

    def on_close(self) -> None:
        handlers = self.cumulus.connections.get(getattr(self, "kernel_id", ""), set())
        handlers.discard(self)
        super().on_close()

    def inject_iopub(self, frames: list[bytes]) -> None:
        """Deliver a signed iopub message to this client as if the kernel had sent it, through
        the connection's own path (so both WebSocket protocols get their framing)."""
        connection = getattr(self, "connection", None)
        stream = connection.channels.get("iopub") if connection is not None else None
        if connection is not None and stream is not None and not stream.closed():
            connection.handle_outgoing_message("iopub", frames)


class HealthHandler(_Errors):
    @web.authenticated
    async def get(self) -> None:
        km = self.cumulus
        self.finish(
            {
                "status": "ok",
                "runtime": km.runtime.name,
                "kernels": len(km.list_kernel_ids()),
                "partitions": len(km.broker.store.partitions()),
                "queue": km.broker.queue_length,
                "devices": len(km.broker.store.devices),
                "state": str(km.broker.store.path),
                "max_transfer_bytes": self.settings.get("cumulus_max_transfer_bytes", 0),
            }
        )


class DevicesHandler(_Errors):
    @web.authenticated
    async def get(self) -> None:
        store = self.cumulus.broker.store
        used = store.used()
        self.finish(
            json.dumps(
                [d.to_json() | {"free": (10 - used.get(d.index, 0)) / 10} for d in store.devices]
            )
        )


class PartitionsHandler(_Errors):
    @web.authenticated
    async def get(self) -> None:
        user = self.scoped_name()
        partitions = [
            p for p in self.cumulus.broker.store.partitions() if user is None or p.owner == user
        ]
        self.finish(json.dumps([p.to_json() for p in partitions]))


class QueueHandler(_Errors):
    @web.authenticated
    async def get(self) -> None:
        self.finish(json.dumps(self.cumulus.broker.queue()))


default_handlers = [
    (r"/api/kernels", CumulusMainKernelHandler),
    (rf"/api/kernels/{_kernel_id_regex}", CumulusKernelHandler),
    (rf"/api/kernels/{_kernel_id_regex}/{_kernel_action_regex}", CumulusKernelActionHandler),
    (rf"/api/kernels/{_kernel_id_regex}/channels", CumulusKernelWebsocketHandler),
    (r"/api/cumulus/health", HealthHandler),
    (r"/api/cumulus/devices", DevicesHandler),
    (r"/api/cumulus/partitions", PartitionsHandler),
    (r"/api/cumulus/queue", QueueHandler),
]
