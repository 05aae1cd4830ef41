"""jupyter_server's own endpoints that the gateway serves, held to the gateway's rules: ``/api``
(the version), ``/api/kernelspecs[/{name}]`` and ``/metrics`` need a token like every other
endpoint (jupyter_server answers ``/api`` to anyone) and say 401 without one, through
`CumulusErrors`; and `NoSuchEndpoint`, the JSON 404 of the gateway's paths."""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.base.handlers import APIVersionHandler, PrometheusMetricsHandler
from jupyter_server.services.kernelspecs.handlers import (
    KernelSpecHandler,
    MainKernelSpecHandler,
    kernel_name_regex,
)

from cumulus_jupyter.errors import NotFound, Unauthenticated
from gateway.handlers.base import NO_TOKEN, CumulusErrors, CumulusHandler


class VersionHandler(CumulusErrors, APIVersionHandler):
    def get(self) -> None:  # not ``allow_unauthenticated``: `CumulusErrors.prepare` asks a token
        super().get()


class CumulusMainKernelSpecHandler(CumulusErrors, MainKernelSpecHandler):
    """``/api/kernelspecs`` with the gateway's errors (401 without a token, JSON bodies)."""


class CumulusKernelSpecHandler(CumulusErrors, KernelSpecHandler):
    """``/api/kernelspecs/{name}`` with the gateway's errors."""


class MetricsHandler(CumulusErrors, PrometheusMetricsHandler):
    @allow_unauthenticated  # as jupyter_server's: the check is its authenticate_prometheus
    def get(self) -> None:
        if self.settings["authenticate_prometheus"] and not self.logged_in:
            raise Unauthenticated(NO_TOKEN)
        super().get()


class NoSuchEndpoint(CumulusHandler):
    """Under ``/api/kernels/``, ``/api/kernelspecs/`` and ``/api/cumulus/``, what no route
    matches (a malformed kernel or job id, a typo) is the JSON 404 of every other error, not
    jupyter_server's HTML page."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")

    async def prepare(self, *args: Any, **kwargs: Any) -> None:
        await super().prepare(*args, **kwargs)  # without a token it is 401 first, as anywhere
        raise NotFound(f"No such endpoint: {self.request.method} {self.request.path}")


# loaded by jupyter_server as an extra service: the last of ours, before its own
default_handlers = [
    (r"/api", VersionHandler),
    (r"/api/kernelspecs", CumulusMainKernelSpecHandler),
    (rf"/api/kernelspecs/{kernel_name_regex}", CumulusKernelSpecHandler),
    (r"/metrics", MetricsHandler),
    (r"/api/(?:kernels/[^/]+|kernelspecs/[^/]+|cumulus)(?:/.*)?", NoSuchEndpoint),
]
