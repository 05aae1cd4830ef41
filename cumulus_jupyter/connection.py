"""Talking to a Cumulus gateway over REST: settings, one async client, errors mapped once.

Every failure reaches the caller as a `CumulusError` subclass with a sentence a user can act on:
a gateway that cannot be reached is `Unavailable`, a wrong token `Unauthenticated`, a bad
amount `InvalidArgument` with the gateway's own message, no capacity `ResourceExhausted`.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cumulus_jupyter import tls
from cumulus_jupyter.errors import (
    CumulusError,
    InvalidArgument,
    Unauthenticated,
    Unavailable,
    error_for_status,
)
from cumulus_jupyter.protocol import env

DEFAULT_URL = "http://127.0.0.1:8888"
HUB_TOKEN = "JUPYTERHUB_API_TOKEN"  # what JupyterHub gives every single-user server


@dataclass(frozen=True)
class GatewaySettings:
    """Where the gateway is, how to authenticate to it, and (for ``https://``) which CAs to trust
    in its certificate: ``ca_bundle``, else ``CUMULUS_CA_BUNDLE``, else the system's
    (`cumulus_jupyter.tls`)."""

    url: str
    token: str
    ca_bundle: str | None = None

    @classmethod
    def resolve(
        cls, url: str | None = None, token: str | None = None, ca_bundle: str | None = None
    ) -> GatewaySettings:
        """Explicit values first, then ``CUMULUS_GATEWAY_URL`` and ``CUMULUS_TOKEN`` (or the
        file named by ``CUMULUS_TOKEN_FILE``); with neither token set, a JupyterHub
        single-user server's own ``JUPYTERHUB_API_TOKEN``, for a gateway that runs as the hub's
        service. That one goes only to a gateway named explicitly or by
        ``CUMULUS_GATEWAY_URL`` (the hub's spawner environment), never to the default URL."""
        named = url or os.environ.get(env.GATEWAY_URL)
        url = (named or DEFAULT_URL).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise InvalidArgument(
                f"Invalid gateway URL: {url}. It must start with http:// or https://"
            )
        if token is None:
            token = os.environ.get(env.TOKEN)
        if token is None and os.environ.get(env.TOKEN_FILE):
            path = Path(os.environ[env.TOKEN_FILE]).expanduser()
            try:
                token = path.read_text().strip()
            except OSError as exc:
                raise InvalidArgument(
                    f"Cannot read CUMULUS_TOKEN_FILE {path}: {exc.strerror}"
                ) from exc
        if token is None and named:
            token = os.environ.get(HUB_TOKEN)
        return cls(url, token or "", tls.bundle_path(ca_bundle))

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[4:]

    @property
    def secure(self) -> bool:
        return self.url.startswith("https://")

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The context that verifies an ``https://`` gateway; None for plain ``http://``. Every
        connection to the gateway (REST, kernel WebSocket, data path) is made with this one."""
        return tls.client_context(self.ca_bundle) if self.secure else None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"} if self.token else {}


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or f"HTTP {response.status_code}"
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return response.reason_phrase or f"HTTP {response.status_code}"


class GatewayClient:
    """Async REST client for one gateway."""

    def __init__(self, settings: GatewaySettings, timeout: float = 30.0) -> None:
        self.settings = settings
        self.health: dict[str, Any] = {}  # what the last check() learnt
        self._http = httpx.AsyncClient(
            base_url=settings.url,
            headers=settings.headers,
            timeout=timeout,
            verify=settings.ssl_context or True,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self, method: str, path: str, *, json: Any = None, timeout: float | None = None
    ) -> Any:
        """JSON from the gateway, or a `CumulusError` that says what went wrong."""
        response = await self.respond(method, path, json=json, timeout=timeout)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise Unavailable(
                f"{self.settings.url} answered {path} with something that is not JSON: "
                "is it a Cumulus gateway?"
            ) from exc

    async def respond(
        self, method: str, path: str, *, json: Any = None, timeout: float | None = None
    ) -> httpx.Response:
        """The gateway's successful response, or a `CumulusError` that says what went wrong."""
        kwargs: dict[str, Any] = {"json": json}
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise Unavailable(
                f"The Cumulus gateway at {self.settings.url} did not answer in time"
            ) from exc
        except httpx.HTTPError as exc:
            raise Unavailable(
                tls.refusal(exc, self.settings.url)
                or f"Cannot reach the Cumulus gateway at {self.settings.url}: {exc}"
            ) from exc
        message = _message(response)
        # jupyter_server answers a missing or wrong token with a bare 401/403 "Forbidden"
        if response.status_code == 401 or (response.status_code == 403 and message == "Forbidden"):
            raise Unauthenticated(
                f"The gateway at {self.settings.url} refused the token; check CUMULUS_TOKEN "
                "(or, behind JupyterHub, that the gateway is the hub's service)"
            )
        if response.status_code >= 400:
            retry = response.headers.get("Retry-After")
            raise error_for_status(response.status_code)(
                message, retry_after=float(retry) if retry else None
            )
        return response

    async def check(self) -> dict[str, Any]:
        """The gateway's health; proves the URL is a Cumulus gateway and the token works."""
        try:
            health = await self.request("GET", "/api/cumulus/health")
        except CumulusError as exc:
            if getattr(exc, "status", 0) == 404:
                raise Unavailable(
                    f"{self.settings.url} is not a Cumulus gateway (no /api/cumulus/health)"
                ) from exc
            raise
        if not isinstance(health, dict) or health.get("status") != "ok":
            raise Unavailable(f"{self.settings.url} is not a Cumulus gateway")
        self.health = health
        return health
