"""Who a request is: the operator, a per-user token's user, or a JupyterHub user.

- The gateway's own token is the operator's: it sees and acts on every kernel, and may start
  kernels for any ``KERNEL_USERNAME``. It comes from ``--CumulusIdentityProvider.token_file``
  (a file only its owner can read), or from config (``--IdentityProvider.token`` works too, but
  puts it on the command line, where ``ps`` shows it to every local user).
- ``user_tokens`` ({token: name}, in a config file) or ``user_tokens_file`` (the same as a JSON
  object, mode 0600) give further tokens to named users.
- With ``hub_api_url`` set (the gateway registered as a JupyterHub service), any other token is
  asked of the hub: ``GET {hub_api_url}/user`` with ``Authorization: token <it>``, what
  ``jupyterhub.services.auth.HubAuth`` does. A user's token (a single-user server's
  ``JUPYTERHUB_API_TOKEN`` included) that grants ``access:services`` to this service is that hub
  user. Answers are kept ``hub_cache_seconds``; refusals are not kept.

Users of the last two kinds are `ScopedUser`: they start kernels only as themselves (their
``KERNEL_USERNAME`` is their name), and see, use and stop only their own kernels, partitions,
jobs, logs, transfers and checkpoints; quotas count them by that name. Logins are never kept in
a cookie (every client sends its token on each request), so a user can come only from a token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from jupyter_server.auth.identity import IdentityProvider, User
from tornado import web
from traitlets import Dict, Float, Unicode, default

from cumulus_jupyter.errors import InvalidArgument

HUB_TIMEOUT_S = 30.0  # a loaded hub answers slowly; a timeout is a refusal (401)
HUB_CACHE_MAX = 4096  # tokens remembered at once; the oldest go first


@dataclass
class ScopedUser(User):
    """A user who may touch only what they own (per-user token or JupyterHub user)."""

    via: str = "token"  # "token" or "hub"


def read_secret(path: str) -> str:
    """The file's content, stripped: `InvalidArgument` when it cannot be read, is empty, or
    can be read by anyone but its owner (``chmod 600`` it)."""
    file = Path(path).expanduser()
    try:
        mode = file.stat().st_mode
        text = file.read_text().strip()
    except OSError as exc:
        raise InvalidArgument(f"Cannot read the secret file {file}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InvalidArgument(
            f"{file} can be read by others (mode {stat.S_IMODE(mode):04o}); "
            f"chmod 600 {file} and start again"
        )
    if not text:
        raise InvalidArgument(f"The secret file {file} is empty")
    return text


def _user(name: str, via: str) -> ScopedUser:
    return ScopedUser(username=name, name=name, display_name=name, initials=name[:2], via=via)


def _grants_access(model: dict[str, Any], service: str) -> bool:
    """Whether the hub's model of a token lets it use this service (HubAuth's access scope)."""
    scopes = model.get("scopes")
    if not isinstance(scopes, list):  # a hub before 2.0 lists no scopes: any user's token
        return True
    return "access:services" in scopes or f"access:services!service={service}" in scopes


class HubUsers:
    """A JupyterHub's users by their API tokens, asked of the hub and kept a while."""

    def __init__(self, api_url: str, service: str, cache_seconds: float, log: Any) -> None:
        self.api_url, self.service, self.cache_seconds, self.log = (
            api_url.rstrip("/"), service, cache_seconds, log,
        )  # fmt: skip
        self._known: dict[str, tuple[float, str]] = {}  # sha256(token) -> (until, name)
        self._http: httpx.AsyncClient | None = None

    async def name_for(self, token: str) -> str | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        until, known = self._known.get(key, (0.0, ""))
        if time.monotonic() < until:
            return known
        self._known.pop(key, None)
        name = await self._ask(token)
        if name is not None and self.cache_seconds > 0:
            if len(self._known) >= HUB_CACHE_MAX:
                self._known.pop(next(iter(self._known)))
            self._known[key] = (time.monotonic() + self.cache_seconds, name)
        return name

    async def _ask(self, token: str) -> str | None:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=HUB_TIMEOUT_S)
        try:
            response = await self._http.get(
                f"{self.api_url}/user", headers={"Authorization": f"token {token}"}
            )
        except httpx.HTTPError as exc:
            self.log.warning("JupyterHub at %s did not answer: %s", self.api_url, exc)
            return None
        if response.status_code != 200:
            return None  # not a token the hub knows (403), or expired
        try:
            model = response.json()
        except ValueError:
            self.log.warning("JupyterHub at %s answered /user with no JSON", self.api_url)
            return None
        return self._name(model)

    def _name(self, model: Any) -> str | None:
        if not isinstance(model, dict) or model.get("kind", "user") != "user":
            return None  # a service's token is nobody's
        name = model.get("name")
        if not isinstance(name, str) or not name:
            return None
        if not _grants_access(model, self.service):
            self.log.warning(
                "hub user %s's token lacks access:services!service=%s: refused", name, self.service
            )
            return None
        return name


class CumulusIdentityProvider(IdentityProvider):
    token_file = Unicode(
        "",
        config=True,
        help="A file (mode 0600) holding the operator's token: it stays off the command line "
        "and out of the environment.",
    )

    user_tokens = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        config=True,
        help="Per-user tokens, {token: username}: each user sees and uses only their kernels. "
        "Set it in a config file or with user_tokens_file, not on the command line.",
    )

    user_tokens_file = Unicode(
        "",
        config=True,
        help="A JSON file (mode 0600) of per-user tokens, {token: username}, added to user_tokens.",
    )

    hub_api_url = Unicode(
        config=True,
        help="The JupyterHub API (http://HUB:8081/hub/api): tokens of its users are accepted as "
        "those users. Default: $JUPYTERHUB_API_URL, if set; empty: no hub.",
    )

    hub_service_name = Unicode(
        config=True,
        help="This gateway's name among the hub's services: a user's token must grant "
        "access:services!service=NAME. Default: $JUPYTERHUB_SERVICE_NAME, else 'cumulus'.",
    )

    hub_cache_seconds = Float(
        60.0,
        config=True,
        help="Seconds a hub user's token is trusted before the hub is asked again.",
    )

    @default("hub_api_url")
    def _hub_api_url_default(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL", "")

    @default("hub_service_name")
    def _hub_service_name_default(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_NAME", "cumulus")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.token_file:  # read now, so that a bad file stops start-up with its one line
            self.token, self.token_generated = read_secret(self.token_file), False
        self._user_tokens = dict(self.user_tokens) | self._tokens_from_file()
        self.hub = (
            HubUsers(self.hub_api_url, self.hub_service_name, self.hub_cache_seconds, self.log)
            if self.hub_api_url
            else None
        )

    def _tokens_from_file(self) -> dict[str, str]:
        if not self.user_tokens_file:
            return {}
        try:
            tokens = json.loads(read_secret(self.user_tokens_file))
        except ValueError as exc:
            raise InvalidArgument(f"{self.user_tokens_file} is not JSON: {exc}") from exc
        if not isinstance(tokens, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and v for k, v in tokens.items()
        ):
            raise InvalidArgument(f'{self.user_tokens_file} must be {{"token": "username", ...}}')
        return tokens

    @property
    def scopes_users(self) -> bool:
        """Whether any request can be a scoped user (per-user tokens or a hub)."""
        return bool(self._user_tokens) or self.hub is not None

    async def get_user_token(self, handler: web.RequestHandler) -> User | None:
        presented = self.get_token(handler) or ""
        if not presented:
            return None
        for token, name in self._user_tokens.items():
            if hmac.compare_digest(presented.encode(), token.encode()):
                return _user(name, "token")
        operator = await super().get_user_token(handler)
        if operator is not None:
            return operator
        if self.hub is not None:
            name = await self.hub.name_for(presented)
            if name is not None:
                return _user(name, "hub")
        return None

    def get_user_cookie(self, handler: web.RequestHandler) -> User | None:
        """None: a login is never read from a cookie (each request carries its token)."""
        return None

    def set_login_cookie(self, handler: web.RequestHandler, user: User) -> None:
        """Nothing: a login is never kept in a cookie."""

    def scoped_name(self, user: User | None) -> str | None:
        """The user's name when their access is scoped to their own kernels; None for the
        operator (the gateway's own token)."""
        return user.username if isinstance(user, ScopedUser) else None
